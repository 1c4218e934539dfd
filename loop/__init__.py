"""The denoising loop and its techniques: ``pipeline`` (the loop and its hooks), ``predict``
(batched, guided ControlNet + UNet calls), ``techniques``, ``flow_fusion`` and ``planners`` (the
latent techniques, flow fusion, the ones that plan the model's calls), ``attention`` and ``tokens``
(their attention processors, token merging), ``keyframes`` (the keyframe driver), ``registry``
(the techniques' order), ``indices`` (step specs).

Imports ``common``, ``latent_ops`` and ``noise`` only: nothing here knows where models or inputs
come from."""
