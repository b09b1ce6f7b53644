"""Recipe 2, Transfusion at scale: ResNet-50 / Inception-v3 on RETINA, CheXpert and CIFAR-10.

One training run (``job = train``) of the Transfusion paper's large-model studies, at the
paper's input sizes, on the public datasets tfds knows:

- ``dr_resnet50``, ``dr_inception_v3``: ``diabetic_retinopathy_detection/btgraham-300``,
  train / validation; referable DR (grade >= 2) as a 2-class softmax; 587 x 587; converged
  at ROC-AUC >= 0.91.
- ``chexpert_resnet50``, ``chexpert_inception_v3``: ``chexpert``, train / validation; the 5
  competition pathologies, multi-hot, U-Ones, sigmoid; 224 x 224; mean ROC-AUC >= 0.80.
- ``cifar10_resnet50``, ``cifar10_inception_v3``: ``cifar10``, train / test; 10 classes,
  softmax; 32 upsampled to 224; accuracy >= 0.90.

RETINA in the paper is a private Google fundus set; the Kaggle/EyePACS data of
``diabetic_retinopathy_detection`` stands in for it. ``btgraham-300`` is that builder's
config with each fundus cropped square around the eye (about 540 px), the Kaggle winner's
preprocessing; it is resized to the paper's 587 x 587 here (``--config.data.image_size=512``
avoids the upsampling; ``diabetic_retinopathy_detection/1M`` keeps the raw photographs,
whose non-square frames are then squeezed). The ROC-AUC the trainer reports for ``dr_*`` is
the referable-DR AUC (`transfusion_jax.data.labels`), and 0.91 is the paper's RETINA
threshold: on the Kaggle data pick a level every init reaches (e.g.
``--config.convergence.threshold=0.85``) before comparing steps-to-threshold. CheXpert's AUC
is the macro mean over Atelectasis, Cardiomegaly, Consolidation, Edema and Pleural Effusion
on its 234-image validation split (noisy; ``:...,uzeros`` maps uncertain labels to 0 instead
of 1); 0.80 is a starting point, not the paper's. CIFAR-10 images are upsampled to the
ImageNet models' 224 (``--config.data.image_size=32`` trains at native size). Inputs use
ImageNet normalisation, RGB (CheXpert's grey X-rays are repeated to 3 channels); Inception-v3
also applies torchvision's ``transform_input``, so torchvision's ImageNet weights see the
range they were trained on.

The hyper-parameters are starting points, the same for every init so convergence speeds
compare: SGD + Nesterov momentum 0.9, learning rate 0.1 per 256 images, cosine decay with
warm-up, weight decay 1e-4 (RETINA) / 5e-4 (CIFAR-10); Adam 1e-4 for CheXpert (as Irvin et
al. 2019). Global batch 256 (a multiple of 8, 16 and 32 devices), float32 (``bf16`` for
bfloat16 compute, the fast choice on TPUs and recent GPUs), eval every 250 steps (the
resolution of steps-to-threshold), checkpoints every 500 steps with every 2,500th kept for
similarity-over-training analyses.

Initialisation is random (He normal) by default. Pretrained-style inits read the torchvision
ImageNet files a user brings (``resnet50-0676ba61.pth``, ``inception_v3_google-0cc3c7bd.pth``)
with the new head kept random; the ``pretrained`` / ``mean_var`` args set that up and
``init.source`` names the file. As the base of a sweep (``sweep.axes.init`` x
``sweep.seeds``) use the plain arg: the sweep sets ``init`` and ``seed`` per run.

Commands (from the repository root):

    # 1. Prepare the data once, on a machine with TensorFlow and OpenCV (training needs
    #    neither): download the archives by hand (Kaggle DR, CheXpert-v1.0-small), then
    launch/prepare_data.sh $HOME/tensorflow_datasets $HOME/manual   # or, one by one:
    tfds build diabetic_retinopathy_detection/btgraham-300 --data_dir=$HOME/tensorflow_datasets \
        --file_format=array_record --manual_dir=$HOME/manual/diabetic_retinopathy_detection
    tfds build chexpert --data_dir=$HOME/tensorflow_datasets --file_format=array_record \
        --manual_dir=$HOME/manual/chexpert
    tfds build cifar10 --data_dir=$HOME/tensorflow_datasets --file_format=array_record

    # 2a. One machine, every local GPU (or CPU: see the smoke arg):
    python -m transfusion_jax.main --config=configs/recipe_at_scale.py:dr_resnet50 \
        --workdir=runs/dr_resnet50_random --config.data.data_dir=$HOME/tensorflow_datasets
    python -m transfusion_jax.main --config=configs/recipe_at_scale.py:dr_resnet50,pretrained \
        --workdir=runs/dr_resnet50_pretrained \
        --config.init.source=$HOME/weights/resnet50-0676ba61.pth

    # 2b. Multi-GPU box, one process per GPU:
    launch/gpu_multiprocess.sh 8 configs/recipe_at_scale.py:chexpert_inception_v3,bf16 \
        runs/chexpert_iv3 --config.data.data_dir=/data/tfds

    # 2c. TPU VM slice (data and workdir on a bucket every host reads):
    launch/tpu_vm.sh run my-tpu us-central2-b configs/recipe_at_scale.py:dr_inception_v3,bf16 \
        gs://BUCKET/runs/dr_iv3 --config.data.data_dir=gs://BUCKET/tfds

Expected: ``summary.md`` / ``summary.json`` in the workdir with final ROC-AUC (``auc``), mAP,
accuracy, loss and the first step at which the convergence metric reached its threshold;
``curves.png``, ``metrics.jsonl`` and the Orbax checkpoints (step 0 is the init). Re-running
a command resumes. These full-size runs have not been measured with this toolkit: published
work on the Kaggle data reports referable-DR AUCs around 0.9 for ImageNet-pretrained
Inception-v3 / ResNet-50, with random inits lower or slower; Transfusion's finding to look
for is that pretrained inits reach the threshold in fewer steps more than they end higher.
A ``dr_*`` run is 10,000 steps of 256 images at 587 px (about 73 epochs, 2.6M images; at
587 px a ResNet-50 step costs about 7x one at 224 px): plan on hours, on 8 GPUs or a TPU
slice.

Args (``--config=configs/recipe_at_scale.py:ARG``): ``TASK_MODEL[,MODIFIER...]`` with TASK in
``dr``, ``chexpert``, ``cifar10``, MODEL in ``resnet50``, ``inception_v3`` (default
``dr_resnet50``) and modifiers:

- ``smoke``: 4 steps of 8 images at 32 px (75 for Inception-v3); checks a prepared dataset
  and the whole path in a minute or two on CPU (tests);
- ``bf16``: bfloat16 compute;
- ``pretrained`` / ``mean_var``: that init with the head random; set ``init.source``;
- ``uzeros``: CheXpert U-Zeros instead of U-Ones;
- ``5k``: a fixed random 5,000-image training subset (the paper's small-data RETINA regime).
"""

from transfusion_jax.config import base_config

MODELS = ("resnet50", "inception_v3")
MODIFIERS = ("smoke", "bf16", "pretrained", "mean_var", "uzeros", "5k")

# Per task: data, label transform, input size, optimizer, length, convergence criterion.
TASKS = {
    "dr": {
        "data": "diabetic_retinopathy_detection/btgraham-300", "train_split": "train",
        "eval_split": "validation", "label_transform": "referable_dr", "image_size": 587,
        "flip": True, "crop_padding": 0, "optimizer": "sgd", "base_lr": 0.1,
        "weight_decay": 1e-4, "steps": 10_000, "warmup_steps": 500, "metric": "auc",
        "threshold": 0.91,
    },
    "chexpert": {
        "data": "chexpert", "train_split": "train", "eval_split": "validation",
        "label_transform": "chexpert5_uones", "image_size": 224, "flip": False,
        "crop_padding": 0, "optimizer": "adam", "base_lr": 1e-4, "weight_decay": 0.0,
        "steps": 6_000, "warmup_steps": 200, "metric": "auc", "threshold": 0.80,
    },
    "cifar10": {
        "data": "cifar10", "train_split": "train", "eval_split": "test", "label_transform": "",
        "image_size": 224, "flip": True, "crop_padding": 28,  # 4 px at 32, upsampled x7
        "optimizer": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "steps": 15_000,
        "warmup_steps": 500, "metric": "accuracy", "threshold": 0.90,
    },
}


def _parse(arg: str | None) -> tuple[str, str, set[str]]:
    recipe, *modifiers = [part.strip() for part in (arg or "dr_resnet50").split(",")]
    task, _, model = recipe.partition("_")
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if task not in TASKS or model not in MODELS or unknown:
        recipes = [f"{t}_{m}" for t in TASKS for m in MODELS]
        raise ValueError(
            f"configs/recipe_at_scale.py takes TASK_MODEL[,MODIFIER...] with TASK_MODEL in "
            f"{', '.join(recipes)} and modifiers in {', '.join(MODIFIERS)}; got {arg!r}")
    if "pretrained" in modifiers and "mean_var" in modifiers:
        raise ValueError("configs/recipe_at_scale.py: choose one of pretrained, mean_var")
    return task, model, set(modifiers)


def get_config(arg: str | None = None):
    task, model, modifiers = _parse(arg)
    t = TASKS[task]
    c = base_config()
    c.model.name = model
    if model == "inception_v3":
        c.model.options.transform_input = True  # torchvision's, for its ImageNet weights
    c.model.dtype = "bfloat16" if "bf16" in modifiers else "float32"

    c.init.name = "random"
    c.init.options.scheme = "he_normal"
    c.init.source = ""  # e.g. /path/resnet50-0676ba61.pth for pretrained-style inits
    for name in ("pretrained", "mean_var"):
        if name in modifiers:
            c.init.name = name
            c.init.options.dont_load = ("^head/",)  # the new task head stays random

    c.data.name = t["data"]
    c.data.train_split, c.data.eval_split = t["train_split"], t["eval_split"]
    c.data.label_transform = t["label_transform"]
    if "uzeros" in modifiers:
        if task != "chexpert":
            raise ValueError("configs/recipe_at_scale.py: uzeros applies to chexpert only")
        c.data.label_transform = "chexpert5_uzeros"
    c.data.image_size = t["image_size"]
    c.data.channels = 3
    c.data.normalize = "imagenet"
    c.data.augment.flip = t["flip"]
    c.data.augment.crop_padding = t["crop_padding"]
    c.data.train_examples = 5000 if "5k" in modifiers else 0
    c.data.num_threads = 16  # per process: decoding and resizing large JPEGs is the cost

    c.train.steps = t["steps"]
    c.train.batch_size = 256
    c.train.optimizer.name = t["optimizer"]
    c.train.optimizer.momentum = 0.9
    c.train.optimizer.nesterov = True
    c.train.schedule.name = "cosine"
    c.train.schedule.base_lr = t["base_lr"]
    c.train.schedule.warmup_steps = t["warmup_steps"]
    c.train.weight_decay = t["weight_decay"]

    c.eval.every_steps = 250
    c.eval.batch_size = 256
    c.convergence.metric = t["metric"]
    c.convergence.threshold = t["threshold"]
    c.convergence.mode = "max"

    c.checkpoint.every_steps = 500
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_every = 2500
    c.log.every_steps = 50

    if "smoke" in modifiers:
        c.data.image_size = 75 if model == "inception_v3" else 32  # Inception-v3 needs >= 75
        c.data.augment.crop_padding = min(c.data.augment.crop_padding, 4)
        c.data.eval_split = f"{t['eval_split']}[:16]"
        c.data.num_threads = 2
        c.train.steps, c.train.batch_size = 4, 8
        c.train.schedule.warmup_steps = 1
        c.eval.every_steps, c.eval.batch_size = 2, 8
        c.checkpoint.every_steps, c.checkpoint.keep_last, c.checkpoint.keep_every = 2, 1, 0
        c.log.every_steps = 2
    return c
