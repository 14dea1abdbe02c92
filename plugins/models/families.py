"""Model families of the built-in model plugins, one definition each: the registrations
(``ModelSource.family``) and the loaded models' ``describe()["family"]`` read them from here.
Import-light (no torch), so registrations and model modules can both import it."""

#: Every open_clip architecture, hf-hub checkpoint and the tiny test configs.
OPEN_CLIP = "open_clip"
