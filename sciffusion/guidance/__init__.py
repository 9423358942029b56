"""Composable guidance: classifier-free guidance, gradient guidance, and hard constraints.

* :func:`classifier_free` combines conditional and unconditional predictions.
* :class:`GradientGuidance` steers sampling down the gradient of any differentiable loss of the predicted
  clean sample (classifier, regressor, value function, cost; DPS-style, through the network).
* :class:`Inpaint` and :class:`Project` are hard constraints applied to the state after every step.

Several of each can be used at once; see :meth:`sciffusion.model.DiffusionModel.sample`.
"""
from sciffusion.guidance.constraints import Inpaint, Project
from sciffusion.guidance.gradient import GradientGuidance, apply_gradient_guidance, classifier_free

__all__ = ["GradientGuidance", "Inpaint", "Project", "apply_gradient_guidance", "classifier_free"]
