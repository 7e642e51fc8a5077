"""The names ``sampler=`` and ``--sampler`` accept, the diffusers scheduler each one builds, and the
schedule a model is sampled on when nothing says how it was trained.

Names only, so the command line offers them without importing diffusers; ``sampling.SAMPLERS``
maps them to the classes. Each is built from the pipeline scheduler's config, so the training
schedule (betas, number of training steps, prediction type) carries over.
"""

SAMPLER_SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def scheduler_class(name: str, source: str):
    """The diffusers scheduler class called ``name`` (as saved in a config), or an error naming ``source``."""
    import diffusers

    from unet_diffusion.errors import InputError

    found = getattr(diffusers, name, None)
    if not (isinstance(found, type) and name.endswith("Scheduler")):
        raise InputError(f"{source} names the scheduler {name!r}, which this diffusers ({diffusers.__version__}) lacks; upgrade diffusers.")
    return found


def default_scheduler(prediction_type: str = "epsilon"):
    """The schedule a model is sampled on when nothing stored says how it was trained (a bare U-Net, a sampler named
    without a scheduler): DDPM's 1000 linear steps (betas 1e-4 to 0.02), written out here rather than left to
    diffusers' defaults."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         prediction_type=prediction_type)
