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
