"""Built-in generators and discriminators; importing this package registers them."""

from i2i.models import patchgan, resnet, timm_unet, unet  # noqa: F401  (registration)
