"""Pyro guides (amortised posteriors) of multimodal data: read them, copy them, edit them."""

from guides.mixture_of_experts import MixtureOfExpertsGuide

__all__ = ["MixtureOfExpertsGuide"]
