"""Training methods as recipes (torchtune's idea): a family holds the recipe object it is
trained by, and the engine runs any recipe. See recipe.py for the interface.

    backprop.py                one loss, one optimizer
    adversarial.py             generator/discriminator roles, TTUR, n_critic, lazy regularisers
    contrastive_divergence.py  CD-k / PCD: updates that are not a gradient of a loss
    distill.py                 an EMA target inside the loss (consistency training)
    engine.py                  the step: phases, accumulation, gradient sync, clipping, EMA
"""
from genray.components.training.adversarial import Adversarial
from genray.components.training.backprop import Backprop
from genray.components.training.contrastive_divergence import ContrastiveDivergence
from genray.components.training.distill import EMATarget
from genray.components.training.engine import EMA, Engine, StepSettings, lr_factor, step_seed
from genray.components.training.recipe import OptimDefaults, Phase, Recipe

__all__ = ["Adversarial", "Backprop", "ContrastiveDivergence", "EMA", "EMATarget", "Engine", "OptimDefaults",
           "Phase", "Recipe", "StepSettings", "lr_factor", "step_seed"]
