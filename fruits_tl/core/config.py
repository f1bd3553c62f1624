"""Frozen, validated configuration dataclasses: what the binaries build from their flags; and
the error types a bad setting or bad input raises (`UserInputError`, below).

Validation happens in `__post_init__`, so a config that exists is a config that is usable;
every message names the field, which is also the name of the binary's flag.
"""

from __future__ import annotations

import dataclasses
import math
import os

OPTIMIZERS = ("rmsprop", "adam", "sgd")
MODES = ("auto", "features", "images")
DATA_SOURCES = ("folder", "tfds")
FEATURE_DTYPES = ("float32", "float16")
# Sizes and widths for which Keras publishes ImageNet MobileNet v1 weights.
IMAGENET_IMAGE_SIZES = (128, 160, 192, 224)
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)


# The named transforms of --augment, with their default strengths (see Augmentation).
AUGMENT_DEFAULTS = {
    "flip_left_right": 0.5,
    "flip_up_down": 0.5,
    "rotate": 0.05,
    "zoom": 0.1,
    "brightness": 0.1,
    "contrast": 0.1,
}
# What each strength means, and its range (exclusive low, inclusive high).
AUGMENT_MEANINGS = {
    "flip_left_right": ("the probability of a mirror image", 0.0, 1.0),
    "flip_up_down": ("the probability of an upside-down image", 0.0, 1.0),
    "rotate": ("the largest turn, as a fraction of a full turn (0.05: +-18 degrees)", 0.0, 0.5),
    "zoom": ("the largest change of scale, in or out (0.1: 0.9x to 1.1x)", 0.0, 0.9),
    "brightness": ("the largest brightness shift, as a fraction of 255", 0.0, 1.0),
    "contrast": ("the largest change of contrast (0.1: 0.9x to 1.1x)", 0.0, 1.0),
}


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


# Seconds without an element from the tf.data service before it counts as lost.
DATA_SERVICE_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images are and how the input pipeline treats them.

    Attributes:
      data_dir: Folder holding `train_subdir/<class>/*` and usually `test_subdir/<class>/*`.
      train_subdir: Training folder name inside `data_dir`; its sub-folders define the classes.
      test_subdir: Test folder name inside `data_dir`; checked against the training classes.
      validation_split: Fraction of training images (seeded, class-mixed) held out for
        validation. 0 validates on the test folder.
      image_size: Images are resized to image_size x image_size.
      shuffle_buffer_size: 0 for a uniform shuffle of the split; n for a local one (an
        example moves about n places at most).
      seed: Seed for the validation split and the shuffle.
      skip_bad_images: Leave out undecodable files instead of stopping.
      exclude_list: A file listing images to leave out (one path per line), e.g. written by
        fruits-tl-audit --write_exclude_list.
      data_source: "folder" (data_dir) or "tfds" (the fruits360 TFDS dataset in
        tfds_data_dir, prepared from manual_dir first if needed).
      tfds_data_dir: Where the prepared TFDS records live ("" for TFDS's default).
      manual_dir: Where the extracted Fruits-360 folder or its archive lies, for preparing.
      data_service_address: "grpc://host:port" of a tf.data service dispatcher that decodes
        the images ("" decodes here).
      data_service_timeout: Seconds without an element from the service before a worker or
        the dispatcher counts as lost (the job then stops with a message).
      decode_parallelism: Parallel calls of the decode pass that fills the pixel store (0:
        twice the cores this process may run on, `decode.decode_parallelism`).
    """

    data_dir: str
    train_subdir: str = "Training"
    test_subdir: str = "Test"
    validation_split: float = 0.0
    image_size: int = 128
    shuffle_buffer_size: int = 0
    seed: int = 42
    skip_bad_images: bool = False
    exclude_list: str = ""
    data_source: str = "folder"
    tfds_data_dir: str = ""
    manual_dir: str = ""
    data_service_address: str = ""
    data_service_timeout: float = DATA_SERVICE_TIMEOUT
    decode_parallelism: int = 0

    def __post_init__(self) -> None:
        require(
            0 <= self.decode_parallelism <= 1024,
            f"decode_parallelism must be in [0, 1024] (0: twice the cores), got "
            f"{self.decode_parallelism}.",
        )
        require(
            not self.data_service_address or self.data_service_address.startswith("grpc://"),
            "data_service_address must look like grpc://host:port, got "
            f"{self.data_service_address!r}.",
        )
        require(
            self.data_service_timeout > 0,
            f"data_service_timeout must be > 0 seconds, got {self.data_service_timeout}.",
        )
        require(
            self.data_source in DATA_SOURCES,
            f"data_source must be one of {', '.join(DATA_SOURCES)}, got {self.data_source!r}.",
        )
        require(
            bool(self.data_dir) or self.data_source == "tfds",
            "data_dir is required: the folder holding Training/ and Test/.",
        )
        require(bool(self.train_subdir), "train_subdir must not be empty.")
        require(
            0.0 <= self.validation_split < 1.0 and not math.isnan(self.validation_split),
            f"validation_split must be in [0, 1), got {self.validation_split}.",
        )
        require(
            isinstance(self.image_size, int) and 8 <= self.image_size <= 1024,
            f"image_size must be an integer from 8 to 1024, got {self.image_size}.",
        )
        require(
            self.shuffle_buffer_size >= 0,
            f"shuffle_buffer must be >= 0 (0 = whole split), got {self.shuffle_buffer_size}.",
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The frozen MobileNet v1 backbone and the new head.

    Attributes:
      alpha: MobileNet width multiplier.
      weights: "imagenet" (Keras's own download and cache), "none" (random), or a path to a
        weights file for `MobileNet(alpha, include_top=False)` at this image size.
      dropout: Dropout rate before the Dense head; 0 for none.
    """

    alpha: float = 1.0
    weights: str = "imagenet"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 < self.alpha <= 4.0, f"alpha must be in (0, 4], got {self.alpha}.")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}.")
        require(bool(self.weights), "weights must be 'imagenet', 'none' or a file path.")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random transforms of the training images, applied on the host in the training input
    pipeline (`fruits_tl.data.augment`), each drawn from (seed, epoch, example index).

    Attributes:
      transforms: (name, strength) pairs, names from AUGMENT_DEFAULTS, each at most once.
    """

    transforms: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.transforms]
        for name, strength in self.transforms:
            require(
                name in AUGMENT_DEFAULTS,
                f"augment: unknown transform {name!r}; the transforms are "
                f"{', '.join(AUGMENT_DEFAULTS)}.",
            )
            meaning, low, high = AUGMENT_MEANINGS[name]
            require(
                low < strength <= high and not math.isnan(strength),
                f"augment: {name}={strength} is out of range: its strength is {meaning}, in "
                f"({low}, {high}].",
            )
            require(names.count(name) == 1, f"augment: {name} is named more than once.")

    @classmethod
    def parse(cls, spec: str) -> Augmentation:
        """Parses `--augment`: comma-separated names, each optionally `=strength`, e.g.
        "flip_left_right,rotate=0.1"; "" for none."""
        transforms = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip()
            if not value:
                strength = AUGMENT_DEFAULTS.get(name, 1.0)
            else:
                try:
                    strength = float(value)
                except ValueError:
                    raise UserInputError(
                        f"augment: the strength of {name} must be a number, got {value!r}."
                    ) from None
            transforms.append((name, strength))
        return cls(tuple(transforms))

    def strength(self, name: str) -> float:
        """The strength of `name`, 0 when it is not applied."""
        return dict(self.transforms).get(name, 0.0)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def spec(self) -> str:
        """The `--augment` value that gives this augmentation."""
        return ",".join(f"{name}={strength:g}" for name, strength in self.transforms)


NO_AUGMENTATION = Augmentation()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training job.

    Attributes:
      data: The input data settings.
      model: The backbone and head settings.
      model_dir: Where the model and its reports are written.
      batch_size: The global batch size (split across replicas).
      epochs: Passes over the training split.
      learning_rate: The head's learning rate, or "auto": a learning-rate range test on the
        training data picks it (`fruits_tl.training.phase`).
      optimizer: One of OPTIMIZERS.
      save_h5: Also write the legacy Keras `.h5` file.
      verbose: 0 silent, 1 progress of the extraction, 2 one line per epoch.
      mode: "features" (extract backbone features once, train the head on them), "images"
        (the backbone runs on every image every epoch), or "auto" (features, unless
        augmentation without fine-tuning asks for images).
      features_dir: Where features are stored and reused; "" means `<model_dir>/features`.
      feature_dtype: "float32" or "float16" for stored features.
      tensorboard_dir: Also write per-epoch images/s and metrics as TensorBoard scalars here.
      checkpoint_dir: Where checkpoints go; "" means `<model_dir>/checkpoints`.
      checkpoint_every_steps: Checkpoint after every this many training steps too; 0 for once
        per epoch only.
      keep_checkpoints: How many of the most recent checkpoints to keep while training.
      keep_checkpoints_on_success: Keep them after the job finishes (removed otherwise).
      restart: Remove the checkpoints and start from the first step.
      deterministic: Seeded, op-deterministic training (keras.utils.set_random_seed and
        tf.config.experimental.enable_op_determinism): the same weights on every run.
      extract_chunk_images: Images per stored chunk of the extraction (features mode).
      extract_batch_size: Global batch of the backbone pass over the store (features mode; 0:
        64 per replica). fruits-tl-bench --recommend measures the fastest on this machine.
      collective_timeout: Under several workers, seconds without progress of the cluster
        (a training step, a barrier) before this worker stops with an error.
      augment: Random transforms of the training images (images mode and fine-tuning).
      fine_tune_layers: After the head, unfreeze about this many of the backbone's last layers
        (rounded up to whole MobileNet blocks) and train them with the head on the images;
        0 for no fine-tuning. BatchNorm layers stay frozen, in inference mode.
      fine_tune_epochs: Epochs of fine-tuning.
      fine_tune_learning_rate: Learning rate of fine-tuning.
      fine_tune_optimizer: Optimizer of fine-tuning, one of OPTIMIZERS.
    """

    data: DataConfig
    model: ModelConfig
    model_dir: str
    batch_size: int = 32
    epochs: int = 25
    learning_rate: float | str = 1e-4
    optimizer: str = "rmsprop"
    save_h5: bool = False
    verbose: int = 2
    mode: str = "auto"
    features_dir: str = ""
    feature_dtype: str = "float32"
    tensorboard_dir: str = ""
    checkpoint_dir: str = ""
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 1
    keep_checkpoints_on_success: bool = False
    restart: bool = False
    deterministic: bool = False
    extract_chunk_images: int = 2048
    extract_batch_size: int = 0
    collective_timeout: float = 300.0
    augment: Augmentation = NO_AUGMENTATION
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    fine_tune_optimizer: str = "adam"

    @property
    def find_learning_rate(self) -> bool:
        """Whether the learning-rate finder chooses the head's learning rate."""
        return self.learning_rate == "auto"

    def __post_init__(self) -> None:
        require(bool(self.model_dir), "model_dir is required: where the model is written.")
        require(
            self.collective_timeout > 0,
            f"collective_timeout must be > 0, got {self.collective_timeout}.",
        )
        require(
            self.checkpoint_every_steps >= 0,
            "checkpoint_every_steps must be >= 0 (0: once per epoch), got "
            f"{self.checkpoint_every_steps}.",
        )
        require(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}.",
        )
        require(
            0 <= self.extract_batch_size <= 65536,
            f"extract_batch_size must be in [0, 65536] (0: 64 per replica), got "
            f"{self.extract_batch_size}.",
        )
        require(
            self.extract_chunk_images >= 1,
            f"extract_chunk_images must be >= 1, got {self.extract_chunk_images}.",
        )
        require(
            1 <= self.batch_size <= 65536,
            f"batch_size must be in [1, 65536], got {self.batch_size}.",
        )
        require(1 <= self.epochs <= 100000, f"epochs must be >= 1, got {self.epochs}.")
        require(
            self.learning_rate == "auto"
            or (not isinstance(self.learning_rate, str) and 0.0 < self.learning_rate <= 10.0),
            f"learning_rate must be 'auto' or a number in (0, 10], got {self.learning_rate!r}.",
        )
        require(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.",
        )
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        require(
            self.feature_dtype in FEATURE_DTYPES,
            f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, "
            f"got {self.feature_dtype!r}.",
        )
        self._check_fine_tuning()

    def _check_fine_tuning(self) -> None:
        """The fine-tuning flags, and augmentation's need for a phase on images."""
        require(
            0 <= self.fine_tune_layers <= 1000,
            f"fine_tune_layers must be from 0 (no fine-tuning) to 1000, got "
            f"{self.fine_tune_layers}.",
        )
        require(
            1 <= self.fine_tune_epochs <= 100000,
            f"fine_tune_epochs must be >= 1, got {self.fine_tune_epochs}.",
        )
        require(
            0.0 < self.fine_tune_learning_rate <= 1.0,
            f"fine_tune_learning_rate must be in (0, 1], got {self.fine_tune_learning_rate}.",
        )
        require(
            self.fine_tune_optimizer in OPTIMIZERS,
            f"fine_tune_optimizer must be one of {', '.join(OPTIMIZERS)}, got "
            f"{self.fine_tune_optimizer!r}.",
        )
        require(
            not (self.augment and self.mode == "features" and not self.fine_tune_layers),
            f"augment ({self.augment.spec()}) changes the images every epoch, but --mode=features "
            "trains the head on features computed once. Use --mode=images (or auto), or "
            "fine-tune (--fine_tune_layers=N), whose phase on the images is augmented.",
        )

    def resolved_mode(self) -> tuple[str, str]:
        """The mode that will run and why."""
        tune = (
            f"; then fine-tuning (--fine_tune_layers={self.fine_tune_layers}) runs on the images"
            + (", augmented" if self.augment else "")
            if self.fine_tune_layers
            else ""
        )
        if self.mode != "auto":
            return self.mode, f"--mode={self.mode} was asked for{tune}"
        if self.augment and not self.fine_tune_layers:
            return "images", (
                f"auto: --augment={self.augment.spec()} changes the images every epoch, so the "
                "backbone must see them every epoch"
            )
        return "features", (
            "auto: the head trains on a frozen backbone, whose features are the same every "
            f"epoch and are computed once{tune}"
        )

    def resolved_features_dir(self) -> str:
        return self.features_dir or os.path.join(self.model_dir, "features")

    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or os.path.join(self.model_dir, "checkpoints")


def parse_learning_rate(text: str) -> float | str:
    """--learning_rate: a number, or "auto"."""
    text = str(text).strip()
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise UserInputError(f"--learning_rate must be a number or 'auto', got {text!r}.") from None


# fruits-tl-train's flags are TrainConfig's fields, with its DataConfig's and ModelConfig's: this
# is the one list (`train_flag_fields`). A flag is named as its field, except these.
_FLAG_NAMES = {"shuffle_buffer_size": "shuffle_buffer"}


def train_flag_fields() -> dict[str, tuple[str, ...]]:
    """fruits-tl-train's flag names, each with the path of the TrainConfig field it sets
    (("data", "seed") for --seed)."""
    paths: dict[str, tuple[str, ...]] = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("data", "model"):
            nested = DataConfig if field.name == "data" else ModelConfig
            for inner in dataclasses.fields(nested):
                paths[_FLAG_NAMES.get(inner.name, inner.name)] = (field.name, inner.name)
        else:
            paths[_FLAG_NAMES.get(field.name, field.name)] = (field.name,)
    return paths


def train_config_from_flags(values: dict[str, object]) -> TrainConfig:
    """The TrainConfig of fruits-tl-train's flag values ({flag name: value}; validated)."""
    fields: dict[str, dict[str, object]] = {"data": {}, "model": {}, "": {}}
    for name, path in train_flag_fields().items():
        value = values[name]
        if name == "learning_rate":
            value = parse_learning_rate(value)
        elif name == "augment":
            value = Augmentation.parse(value or "")
        elif name == "data_dir":
            value = value or ""
        fields[path[0] if len(path) == 2 else ""][path[-1]] = value
    return TrainConfig(
        data=DataConfig(**fields["data"]), model=ModelConfig(**fields["model"]), **fields[""]
    )


def train_config_flags(config: TrainConfig) -> list[str]:
    """The fruits-tl-train flags that give `config` (`train_config_from_flags`' inverse)."""
    flags = []
    for name, path in train_flag_fields().items():
        value = config
        for part in path:
            value = getattr(value, part)
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no'}{name}")
            continue
        if isinstance(value, Augmentation):
            value = ",".join(f"{key}={strength!r}" for key, strength in value.transforms)
        elif isinstance(value, float):
            value = repr(value)
        flags.append(f"--{name}={'' if value is None else value}")
    return flags


BENCH_INPUT_VARIANTS = (
    "legacy",
    "idfd",
    "pipeline-memory-uint8",
    "pipeline-memory-float32",
    "train-input",
)
# Every epoch reads and decodes every file (nothing cached): `decode` is TensorFlow's decoder
# alone over all files in parallel (the ceiling); `audit` is fruits-tl-audit's inspection.
BENCH_DECODE_VARIANTS = ("decode", "audit")
BENCH_MODEL_VARIANTS = ("model-infer", "model-train", "train", "extract", "extract-stored")
BENCH_VARIANTS = BENCH_INPUT_VARIANTS + BENCH_DECODE_VARIANTS + BENCH_MODEL_VARIANTS
# The input pipeline reading the prepared fruits360 TFDS records; asked for by name (they need
# tfds_data_dir, and manual_dir to prepare the records the first time).
BENCH_TFDS_VARIANTS = (
    "tfds-memory-uint8",
    "tfds-memory-float32",
)
# The decode pass through a tf.data service with 1 or 2 local workers; asked for by name.
BENCH_SERVICE_VARIANTS = ("service-1", "service-2")


# The exception types that the binaries turn into one clear message instead of a traceback.


class UserInputError(ValueError):
    """Bad input from the user: a missing folder, a bad image, a flag out of range.

    The message is one paragraph that names the file, folder, flag or class at fault and, where
    there is one, the way out. Binaries print it without a traceback and exit non-zero.
    """


class WorkerLost(UserInputError):
    """Under several workers, a peer died or stopped answering inside a collective.

    Binaries print the message and end the process at once (`stopping.exit_now`), without the
    interpreter's normal teardown: TensorFlow's runtime would wait there on the lost peer (up
    to 14 s measured on loopback with a frozen peer). Every output file is written atomically,
    so nothing is left half-written.
    """
