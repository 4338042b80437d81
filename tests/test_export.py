"""PyTorch interop, proven by equal outputs: export to torchvision/timm/SupContrast, import from
torchvision, bit-exact round trips, refusal of mismatched checkpoints, and the export CLI.

The references are torchvision's and timm's own models, built here with their public
constructors, and SupContrast's tensor names (HobbitLong/SupContrast networks/resnet_big.py).
"""
import functools
import gzip
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch", reason="PyTorch interop tests need torch "
                            "(pip install -r requirements-test.txt)")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision (requirements-test.txt)")
timm = pytest.importorskip("timm", reason="needs timm (requirements-test.txt)")

from configs import base  # noqa: E402
from supcon_jax import checkpointing, export, linear_eval, models, sharding  # noqa: E402
from supcon_jax import experiment, torch_io, train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
TOLERANCE = 1e-4  # max |ours - torch| / max |torch|


def model_config(**overrides) -> ml_collections.ConfigDict:
  config = base.get_config().model
  config.update({"num_classes": 10, "head_dims": (64, 16), **overrides})
  return config


def fashion_mnist(n: int, size: int, channels: int) -> np.ndarray:
  """The first n real Fashion-MNIST test images, [n, size, size, channels] float32, centred
  in a zero border; channels get different gains so a channel-order error shows."""
  if not os.path.exists(FASHION_MNIST_IMAGES):
    pytest.skip(f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_IMAGES})")
  with gzip.open(FASHION_MNIST_IMAGES) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
  border = ((size - 28) // 2, size - 28 - (size - 28) // 2)
  gray = np.pad(raw.astype(np.float32) / 255.0, ((0, 0), border, border))
  gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
  return (gray[..., None] * gains - 0.3) / 0.3


def variable_shapes(model, image_shape) -> dict:
  """{"params", "batch_stats"} of jax.ShapeDtypeStruct for images of image_shape (H, W, C)."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        np.zeros((1,) + tuple(image_shape), np.float32))


def random_variables(model, images: np.ndarray, seed: int = 0) -> dict:
  """Random variables of the model's shapes (NumPy, no XLA compile): He-scaled kernels, and
  every other parameter and running statistic random too, so that a mix-up of scale, bias,
  mean or var changes the output."""
  rng = np.random.default_rng(seed)
  def draw(path, x):
    if path[-1] == "kernel":
      # Fan-in is every axis but the output's; attention's q/k/v kernels [D, heads, head_dim]
      # read only D.
      fan_in = x.shape[0] if path[-2] in ("query", "key", "value") else np.prod(x.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), x.shape).astype(x.dtype)
    if path[-1] == "var":
      return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    if path[-1] == "scale":
      return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    return rng.normal(0, 0.1, x.shape).astype(x.dtype)
  flat = traverse_util.flatten_dict(variable_shapes(model, images.shape[1:]))
  return traverse_util.unflatten_dict({k: draw(k, v) for k, v in flat.items()})


def ours(model, variables, images: np.ndarray) -> dict[str, np.ndarray]:
  forward = jax.jit(functools.partial(model.apply, train=False))
  return jax.tree.map(np.asarray, forward(variables, images))


def torch_forward(module, images: np.ndarray) -> np.ndarray:
  module.eval()
  with torch.no_grad():
    return module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
  error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert error <= TOLERANCE, f"relative error {error:.2e} > {TOLERANCE}"


def torch_tensors(state_dict: dict) -> dict:
  return {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}


def torchvision_resnet(name: str, stem: str, num_classes: int, channels: int = 3):
  """torchvision's ResNet; for the small stem, the usual CIFAR change: 3x3/1 conv1, no
  max-pool."""
  m = getattr(torchvision.models, name)(num_classes=num_classes)
  if stem == "small":
    m.conv1 = torch.nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
  return m


def torch_head(dims, in_dim: int, batch_norm: bool):
  """SupContrast's `head`: Linear, [BatchNorm1d], ReLU per hidden layer, then Linear."""
  layers, width = [], in_dim
  for d in dims[:-1]:
    layers.append(torch.nn.Linear(width, d, bias=not batch_norm))
    if batch_norm:
      layers.append(torch.nn.BatchNorm1d(d))
    layers.append(torch.nn.ReLU())
    width = d
  layers.append(torch.nn.Linear(width, dims[-1]))
  return torch.nn.Sequential(*layers)


def check_head(groups_head: dict, config, out: dict, representation: np.ndarray) -> None:
  head = torch_head(config.head_dims, representation.shape[1], config.head_bn)
  head.load_state_dict(torch_tensors(groups_head), strict=True)
  head.eval()
  with torch.no_grad():
    z = torch.nn.functional.normalize(head(torch.from_numpy(representation)), dim=1).numpy()
  assert_close(out["projection"], z)


def export_random_model(config, images: np.ndarray, fmt: str) -> tuple[dict, dict]:
  """(our outputs on `images`, the files `fmt` holds) of a randomly initialised model."""
  model = models.build_model(config)
  variables = random_variables(model, images)
  files = torch_io.pack(torch_io.to_torch(variables, config, fmt), config, fmt)
  return ours(model, variables, images), files


@pytest.mark.slow
@pytest.mark.parametrize("name,stem,head_bn", [
    ("resnet18", "imagenet", True), ("resnet18", "small", False),
    ("resnet50", "imagenet", False), ("resnet50", "small", True)])
def test_export_to_torchvision_gives_the_same_outputs(name, stem, head_bn):
  config = model_config(name=name, stem=stem, head_bn=head_bn)
  images = fashion_mnist(4, 28, 3)
  expected, files = export_random_model(config, images, "torchvision")
  m = torchvision_resnet(name, stem, config.num_classes)
  m.load_state_dict(torch_tensors(files["encoder"]), strict=True)
  assert_close(expected["logits"], torch_forward(m, images))
  m.fc = torch.nn.Identity()
  representation = torch_forward(m, images)
  assert_close(expected["representation"], representation)
  check_head(files["head"], config, expected, representation)


def test_export_to_supcontrast_uses_its_names_and_gives_the_same_outputs():
  config = model_config(name="resnet18", stem="small", head_dims=(512, 128))
  images = fashion_mnist(4, 28, 1)
  expected, files = export_random_model(config, images, "supcontrast")
  saved = files["encoder"]
  # resnet_big.py: SupConResNet = encoder (conv1, bn1, layer1-4 with `shortcut` = conv, bn)
  # + head (mlp: Linear(512, 512), ReLU, Linear(512, 128)); LinearClassifier has `fc`.
  assert "encoder.layer2.0.shortcut.0.weight" in saved["model"]
  assert saved["model"]["encoder.conv1.weight"].shape == (64, 1, 3, 3)
  assert {k for k in saved["model"] if k.startswith("head.")} == {
      "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
  as_torchvision = {k[len("encoder."):].replace("shortcut", "downsample"): v
                    for k, v in saved["model"].items() if k.startswith("encoder.")}
  m = torchvision_resnet("resnet18", "small", 10, channels=1)
  m.fc = torch.nn.Identity()
  m.load_state_dict(torch_tensors(as_torchvision), strict=True)
  representation = torch_forward(m, images)
  assert_close(expected["representation"], representation)
  head = {k[len("head."):]: v for k, v in saved["model"].items() if k.startswith("head.")}
  check_head(head, config, expected, representation)
  fc = torch.nn.Linear(512, 10)
  fc.load_state_dict(torch_tensors({k[len("fc."):]: v for k, v in saved["classifier"].items()}))
  with torch.no_grad():
    assert_close(expected["logits"], fc(torch.from_numpy(representation)).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("pool,patch_size", [("cls", None), ("gap", 8)])
def test_export_vit_to_timm_gives_the_same_outputs(pool, patch_size):
  config = model_config(name="vit_ti16", pool=pool, patch_size=patch_size)
  images = fashion_mnist(4, 32, 3)
  expected, files = export_random_model(config, images, "timm")
  kwargs = dict(num_classes=10, img_size=32)
  if patch_size:
    kwargs["patch_size"] = patch_size
  if pool == "gap":
    kwargs.update(class_token=False, global_pool="avg", fc_norm=False)
  m = timm.create_model("vit_tiny_patch16_224", **kwargs)
  m.load_state_dict(torch_tensors(files["encoder"]), strict=True)
  assert_close(expected["logits"], torch_forward(m, images))
  m.reset_classifier(0)
  representation = torch_forward(m, images)
  assert_close(expected["representation"], representation)
  check_head(files["head"], config, expected, representation)


def train_state(variables: dict, tx: optax.GradientTransformation) -> experiment.TrainState:
  """A TrainState as training holds it, with the given (random) variables."""
  return experiment.TrainState(step=np.int32(0), params=variables["params"],
                          batch_stats=variables["batch_stats"],
                          opt_state=tx.init(variables["params"]),
                          rng=jax.random.PRNGKey(0))


def randomised_torchvision_resnet50(num_classes: int):
  torch.manual_seed(0)
  m = torchvision.models.resnet50(num_classes=num_classes)
  with torch.no_grad():
    for module in m.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return m


def test_import_from_torchvision_gives_torchs_outputs(tmp_path):
  """A torchvision ResNet-50 file seeds a TrainState through the training hook; our forward
  then equals torchvision's."""
  m = randomised_torchvision_resnet50(10)
  path = str(tmp_path / "resnet50.pth")
  torch.save(m.state_dict(), path)
  images = fashion_mnist(4, 28, 3)
  config = base.get_config()
  config.model = model_config(name="resnet50", stem="imagenet")
  config.init.checkpoint = path
  model = models.build_model(config.model)
  state = train_state(random_variables(model, images, seed=1), optax.sgd(0.1))
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = torch_io.init_from_checkpoint(state, config, jax.tree.map(lambda _: replicated, state))

  out = ours(model, {"params": state.params, "batch_stats": state.batch_stats}, images)
  assert_close(out["logits"], torch_forward(m, images))
  m.fc = torch.nn.Identity()
  assert_close(out["representation"], torch_forward(m, images))


@pytest.mark.parametrize("name,fmt", [("resnet18", "torchvision"), ("resnet18", "supcontrast"),
                                      ("resnet18", "timm"), ("vit_ti16", "timm")])
def test_round_trip_through_files_is_bit_identical(tmp_path, name, fmt):
  config = model_config(name=name, head_bn=True)
  images = fashion_mnist(2, 32, 1)
  variables = random_variables(models.build_model(config), images)
  written = {}
  for key, obj in torch_io.pack(torch_io.to_torch(variables, config, fmt), config, fmt).items():
    written[key] = str(tmp_path / f"{key}.pt")
    torch_io.save(obj, written[key])

  groups = torch_io.unpack(torch_io.load(written["encoder"]), config, fmt)
  if "head" in written:
    groups["head"] = torch_io.load(written["head"])
  loaded, notes = torch_io.from_torch(groups, variables, config, fmt)
  assert notes == []
  original = {(c,) + k: v for c in ("params", "batch_stats")
              for k, v in traverse_util.flatten_dict(variables.get(c, {})).items()}
  assert set(loaded) == set(original)
  for key, value in original.items():
    assert loaded[key].dtype == value.dtype
    np.testing.assert_array_equal(loaded[key], value, err_msg=str(key))


def test_dataparallel_prefixes_are_stripped():
  config = model_config(name="resnet18", stem="small", head_dims=(512, 128))
  variables = random_variables(models.build_model(config), fashion_mnist(1, 28, 1))
  files = torch_io.pack(torch_io.to_torch(variables, config, "supcontrast"), config,
                        "supcontrast")
  # SupContrast wraps the encoder alone in DataParallel: encoder.module.conv1.weight.
  wrapped = {"model": {k.replace("encoder.", "encoder.module."): v
                       for k, v in files["encoder"]["model"].items()}, "epoch": 100}
  loaded, _ = torch_io.from_torch(torch_io.unpack(wrapped, config, "supcontrast"), variables,
                                  config, "supcontrast")
  np.testing.assert_array_equal(loaded[("params", "encoder", "stem_conv", "kernel")],
                                variables["params"]["encoder"]["stem_conv"]["kernel"])
  assert ("params", "projection", "dense2", "kernel") in loaded
  # DataParallel around a whole torchvision model: module.conv1.weight.
  groups = torch_io.unpack({"module.conv1.weight": 0, "module.fc.bias": 1}, config, "torchvision")
  assert groups["encoder"] == {"conv1.weight": 0} and groups["fc"] == {"bias": 1}


def test_mismatched_checkpoint_is_refused_with_every_difference():
  resnet34 = torchvision.models.resnet34(num_classes=1000).state_dict()
  del resnet34["layer1.0.bn1.running_mean"]
  config = model_config(name="resnet18", stem="small")
  variables = variable_shapes(models.build_model(config), (28, 28, 1))
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    torch_io.from_torch(torch_io.unpack(resnet34, config, "torchvision"), variables, config,
                        "torchvision")
  message = str(error.value)
  assert "layer1.2.conv1.weight: not in the configured model" in message
  assert "conv1.weight: shape (64, 3, 7, 7) in the checkpoint, (64, 1, 3, 3)" in message
  assert "layer4.2.bn2.running_var: not in the configured model" in message
  assert "layer1.0.bn1.running_mean: missing from the checkpoint" in message


def test_a_fitting_encoder_loads_and_a_1000_class_fc_is_left_out():
  config = model_config(name="resnet18", stem="imagenet")
  variables = variable_shapes(models.build_model(config), (32, 32, 3))
  groups = torch_io.unpack(torchvision.models.resnet18(num_classes=1000).state_dict(), config,
                           "torchvision")
  loaded, notes = torch_io.from_torch(groups, variables, config, "torchvision")
  assert not any(k[1] == "classifier" for k in loaded)
  assert ("batch_stats", "encoder", "stage4_block2", "bn2", "var") in loaded
  assert any(n.startswith("fc: not loaded") and "(1000, 512)" in n for n in notes)


@pytest.mark.parametrize("name,timm_name,image_size", [
    ("resnet200", "resnet200", 32), ("vit_s16", "vit_small_patch16_224", 224)])
def test_timm_models_load_whole_into_ours(name, timm_name, image_size):
  """Every tensor of timm's ResNet-200 and ViT-S/16 (with fc/head) has its place in ours."""
  config = model_config(name=name, stem="imagenet", num_classes=1000)
  variables = variable_shapes(models.build_model(config), (image_size, image_size, 3))
  state_dict = timm.create_model(timm_name, num_classes=1000).state_dict()
  loaded, notes = torch_io.from_torch(torch_io.unpack(state_dict, config, "timm"), variables,
                                      config, "timm")
  assert notes == ["head: not loaded, kept as initialised (absent from the checkpoint)"]
  assert len(loaded) == len(jax.tree.leaves(variables)) - 4  # all but the projection head


@pytest.mark.parametrize("overrides,fmt,match", [
    ({"width": 2.0}, "torchvision", "only width 1"),
    ({"name": "resnet200"}, "torchvision", "use format timm"),
    ({"name": "vit_s16"}, "supcontrast", "use format timm"),
    ({"stem": "imagenet"}, "supcontrast", "only the small stem"),
    ({"norm": "group"}, "timm", "only norm='batch'"),
    ({}, "onnx", "Unknown PyTorch format")])
def test_unsupported_exports_are_clear_errors(overrides, fmt, match):
  with pytest.raises(ValueError, match=match):
    torch_io.check_supported(model_config(**overrides), fmt)


@pytest.mark.slow
def test_export_cli_end_to_end(tmp_path):
  """A checkpoint as training writes it -> `python -m supcon_jax.export` -> torchvision loads
  it with strict=True (by the printed code) and computes our outputs; --no_fc also loads."""
  config = base.get_config()  # ResNet-18, small stem, Fashion-MNIST (1 channel)
  config.data.image_size = 16
  model = models.build_model(config.model)
  images = fashion_mnist(4, 28, 1)[:, 6:22, 6:22]
  variables = random_variables(model, images, seed=3)
  state = train_state(variables, optax.sgd(0.1, 0.9)).replace(step=np.int32(7))
  workdir = str(tmp_path / "run")
  with checkpointing.create_manager(workdir, config) as manager:
    checkpointing.save(manager, 7, state, config)
    manager.wait_until_finished()
  expected = ours(model, variables, images)

  output = str(tmp_path / "out" / "encoder.pt")
  proc = subprocess.run(
      [sys.executable, "-m", "supcon_jax.export", f"--config={REPO}/configs/base.py",
       f"--workdir={workdir}", "--format=torchvision", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  code = proc.stdout.split("load in PyTorch: ", 1)[1].strip()
  scope: dict = {}
  exec(code, scope)  # builds torchvision's resnet18 and loads the file with strict=True
  m = scope["m"]
  assert int(torch.load(output)["bn1.num_batches_tracked"]) == 7
  assert_close(expected["logits"], torch_forward(m, images))
  m.fc = torch.nn.Identity()
  representation = torch_forward(m, images)
  assert_close(expected["representation"], representation)
  check_head({k: v.numpy() for k, v in torch.load(export.head_path(output)).items()},
             config.model, expected, representation)

  written = export.export_checkpoint(config, workdir, "torchvision",
                                     str(tmp_path / "nofc.pt"), include_fc=False)
  scope = {}
  exec(written["code"], scope)
  assert not any(k.startswith("fc.") for k in torch.load(written["encoder"]))
  assert_close(expected["representation"], torch_forward(scope["m"], images))


def run_config(data_dir: str, checkpoint: str) -> ml_collections.ConfigDict:
  """ResNet-18 (small stem, width 1) on 16 px Fashion-MNIST, starting from `checkpoint`."""
  config = base.get_config()
  config.data.data_dir = data_dir
  config.data.train_split = "train[:16]"
  config.data.eval_split = "test[:8]"
  config.data.image_size = 16
  config.batch_size = 8
  config.num_train_steps = 1
  config.model.head_dims = (16, 8)
  config.init.checkpoint = checkpoint
  return config


def test_training_refuses_a_mismatched_checkpoint_before_any_step(fashion_mnist_dir, tmp_path):
  path = str(tmp_path / "resnet34.pth")
  torch.save(torchvision.models.resnet34().state_dict(), path)
  workdir = tmp_path / "run"
  with pytest.raises(checkpointing.CheckpointMismatchError, match="layer1.2.conv1.weight"):
    train.train_and_evaluate(run_config(fashion_mnist_dir, path), str(workdir))
  assert not list((workdir / "checkpoints").glob("*"))  # nothing trained, nothing saved


@pytest.mark.slow
def test_linear_eval_starts_from_the_init_checkpoint_when_the_workdir_has_none(
    fashion_mnist_dir, tmp_path):
  config = run_config(fashion_mnist_dir, str(tmp_path / "encoder.pt"))
  model = models.build_model(config.model)
  variables = random_variables(model, np.zeros((1, 16, 16, 1), np.float32), seed=5)
  groups = torch_io.to_torch(variables, config.model, "torchvision")
  torch_io.save(torch_io.pack(groups, config.model, "torchvision")["encoder"],
                config.init.checkpoint)
  _, state, step = linear_eval.restore(config, str(tmp_path / "empty"), sharding.create_mesh(),
                                        None)
  assert step == 0
  for key, value in traverse_util.flatten_dict(variables["batch_stats"]).items():
    np.testing.assert_array_equal(np.asarray(traverse_util.flatten_dict(state.batch_stats)[key]),
                                  value)
  np.testing.assert_array_equal(np.asarray(state.params["encoder"]["stem_conv"]["kernel"]),
                                variables["params"]["encoder"]["stem_conv"]["kernel"])
  np.testing.assert_array_equal(np.asarray(state.params["classifier"]["Dense_0"]["kernel"]),
                                variables["params"]["classifier"]["Dense_0"]["kernel"])
