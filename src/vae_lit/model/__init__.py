"""The modelling core: LightningModules that wire the ingredients (likelihoods, objectives, priors,
KL schedules) around a network; each ingredient is one module, each option one class."""
