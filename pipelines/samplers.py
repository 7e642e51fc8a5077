"""The names ``sampler=`` and ``--sampler`` accept, and the diffusers scheduler each one builds.

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
