"""Weight files -> Flax variables: readers (``.pth`` without torch, ``.npz``, ``.safetensors``,
Orbax), name maps (torchvision ResNet / Inception-v3 / GoogLeNet, EfficientNet-Lite) and
`merge_params`, which checks names and shapes and lists every mismatch in one error.

Typical use::

    variables = model.init(key, x)
    variables = load_pretrained("efficientnet_lite0", efficientnet_lite_weights_path(),
                                variables)
    variables = load_pretrained("resnet50", "resnet50-0676ba61.pth", variables,
                                dont_load=("^head/",))  # new head for another task
"""

from transfusion_jax.weights.load import (
    CONVERTERS,
    MODEL_FAMILIES,
    efficientnet_lite_weights_path,
    family_of,
    load_pretrained,
    read_weights,
)
from transfusion_jax.weights.merge import WeightMismatchError, flatten, merge_params, unflatten
from transfusion_jax.weights.name_maps import (
    convert_efficientnet_lite,
    convert_state_dict,
    convert_torchvision_googlenet,
    convert_torchvision_inception_v3,
    convert_torchvision_resnet,
)
from transfusion_jax.weights.pth import read_pth
from transfusion_jax.weights.readers import (
    read_npz,
    read_orbax_params,
    read_orbax_variables,
    read_safetensors,
    save_npz,
)

__all__ = [
    "CONVERTERS",
    "MODEL_FAMILIES",
    "WeightMismatchError",
    "convert_efficientnet_lite",
    "convert_state_dict",
    "convert_torchvision_googlenet",
    "convert_torchvision_inception_v3",
    "convert_torchvision_resnet",
    "efficientnet_lite_weights_path",
    "family_of",
    "flatten",
    "load_pretrained",
    "merge_params",
    "read_npz",
    "read_orbax_params",
    "read_orbax_variables",
    "read_pth",
    "read_safetensors",
    "read_weights",
    "save_npz",
    "unflatten",
]
