"""megatron-core on a selectable device: the device adaptor (``device``), the model's
description (``description``, torch-free) and megatron builders (``model``), checkpoints
(``checkpoint``)."""

from llmbuild.mcore import lazy_compile

lazy_compile.install()
