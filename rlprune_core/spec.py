"""The prune-job spec: the one contract shared by the CLI, the API and the worker.

It imports neither torch nor anything heavy, so the API can validate requests with it in a slim image.
Every field has a default, so ``{}`` is a complete spec: VGG-16 on CIFAR-10, keep 50 % of MACs.

Validation is strict: a number must be a finite number (an int is fine where a float is expected), an int
must be an int (``53248.0`` is refused) and a flag must be a boolean. Lax coercion would turn ``true`` into a
learning rate of 1.0, and ``Infinity`` is not JSON that every database stores. Upper bounds are set where
no sane job goes on any GPU; what a machine can hold (memory for ``dataset.image_size``) is the business of
whoever runs the job, see :mod:`rlprune_core.footprint`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from .architectures import METRIC_REFUSALS, Arch, LibraryArch, architecture_refusal, image_size_for
from .errors import SpecError, describe_validation_error, yaml_problem

# VGG and the torchvision models halve the image five times: below 32 pixels the last stage has nothing to
# see. The CIFAR ResNets halve it twice and take any size the dataset field allows.
MIN_IMAGE_SIZE = 32
ANY_IMAGE_SIZE: tuple[str, ...] = ("resnet20", "resnet56")
DatasetName = Literal["cifar10", "cifar100", "digits", "synthetic", "imagefolder"]
AgentName = Literal["reinforce", "allocation", "random-search", "policy-network", "sensitivity", "l1", "random",
                    "global-l1"]
CriterionName = Literal["l1", "bn-scale", "random"]
# A criterion alone: that criterion at equal per-layer ratios (what a user would do without a search).
# ``<criterion>@agent``: that criterion at the agent's own per-layer counts, which isolates the channel choice.
# ``global-l1``: one l1 ranking across layers (a non-uniform allocation that costs no search).
BaselineName = Literal["l1", "bn-scale", "random", "l1@agent", "bn-scale@agent", "random@agent", "global-l1"]
ExportFormat = Literal["safetensors", "pt2", "onnx"]
ProxyName = Literal["log-likelihood", "calibrated-log-likelihood", "top1"]
MetricName = Literal["macs", "params", "latency"]

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0, le=1e6)]


class _JsonNumbers(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot, or no exponent sign) as a string; JSON and YAML 1.2 read a number.

    Validation is strict (a string is never a number), so the parser itself reads such text as a float.
    """


_JsonNumbers.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"),
)


def _printable(text: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("must not contain control characters")
    return text


# Text a person types: no control characters (a NUL cannot even be stored in PostgreSQL's JSON), bounded.
Text = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_printable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def default_image_size(arch: str) -> int:
    """The image size a job uses when its spec names none.

    The built-in CIFAR models were designed for 32 x 32 images. torchvision's and timm's models were designed,
    and their published weights trained, at 224 x 224, so a checkpoint of one scores as it was trained; a user
    whose images are small sets ``dataset.image_size`` (32 at least) and saves 49x the compute.
    """
    return 224 if arch in get_args(LibraryArch) else 32


class ModelSpec(_Strict):
    arch: Arch = "vgg16"

    @field_validator("arch", mode="before")
    @classmethod
    def _say_why_an_architecture_is_refused(cls, arch: object) -> object:
        """A refused torchvision CNN gets its reason, an unknown name the closest one, not every name."""
        refusal = architecture_refusal(arch) if isinstance(arch, str) else None
        if refusal:
            raise ValueError(refusal)
        return arch
    width: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        default=1.0, description="channel multiplier of the built-in CIFAR models; torchvision and timm models "
        "take 1.0")
    checkpoint: Text | None = Field(
        default=None, description="safetensors state of the unpruned model to start from; pretrain.epochs "
        "then trains from it (0: use it as it is). A classifier of another class count is re-initialised."
    )

    @field_validator("width")
    @classmethod
    def _width_applies_to_the_builtin_models(cls, width: float, info: ValidationInfo) -> float:
        arch = info.data.get("arch")
        if arch in get_args(LibraryArch) and width != 1.0:
            library = "timm" if arch.startswith("timm/") else "torchvision"
            raise ValueError(f"{arch} is built at {library}'s own width, so width must be 1.0")
        return width


class DatasetSpec(_Strict):
    name: DatasetName = "cifar10"
    root: Text = "data"
    download: bool = False
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    # 512 px is allowed here; whether a machine can hold the images at that size is checked where the job
    # runs (rlprune_core.footprint), since it depends on the machine and the dataset. Left out of a job's
    # spec, it follows the architecture (default_image_size).
    image_size: Annotated[int, Field(ge=8, le=512)] = 32
    max_train_samples: Annotated[int, Field(ge=10, le=100_000_000)] | None = None


class TrainSpec(_Strict):
    epochs: Annotated[int, Field(ge=0, le=10_000)] = 30
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 128
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decay: NonNegative = 5e-4
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    schedule: Literal["onecycle", "cosine"] = "onecycle"


class DistillationSpec(_Strict):
    """Finetuning learns from the job's own unpruned model as well as from the labels (Hinton et al. 2015)."""

    weight: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="share of the loss that matches the unpruned model's softened outputs; 0: labels only")
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        default=4.0, description="softens both models' outputs before they are compared")


class FinetuneSpec(TrainSpec):
    epochs: Annotated[int, Field(ge=0, le=10_000)] = 10
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        default=0.05, description="peak learning rate; 0.05 finetuned better than 0.02 (the default before) on "
        "held-out validation for VGG-11 and ResNet-20 on the CIFAR-10 sample (bench/results/findings.md)")
    distillation: DistillationSpec = DistillationSpec()


class LatencyTargetSpec(_Strict):
    """Where a latency budget is measured."""

    device: Literal["cpu", "cuda"] | None = Field(default=None, description="default: the job's device")
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 1
    threads: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="CPU threads while measuring; default: what the worker has")


class BudgetSpec(_Strict):
    metric: MetricName = "macs"
    keep: Fraction = Field(default=0.5, description="the fraction of the unpruned model's MACs, params or "
                           "measured latency on the target that the pruned model may keep")
    target: LatencyTargetSpec | None = Field(default=None, description="latency only; default: batch 1 on the "
                                             "job's device")

    @model_validator(mode="before")
    @classmethod
    def _latency_has_a_target(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("metric") == "latency" and data.get("target") is None:
            return {**data, "target": {}}
        return data

    @field_validator("target")
    @classmethod
    def _target_is_for_latency(cls, target: LatencyTargetSpec | None, info: ValidationInfo) -> LatencyTargetSpec | None:
        if target is not None and info.data.get("metric") != "latency":
            raise ValueError("only a latency budget is measured on a target")
        return target

    @model_serializer(mode="wrap")
    def _without_an_unused_target(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A MACs or params budget serialises as before targets existed, so stored specs, their hashes
        (Idempotency-Key) and resumed work folders compare equal across versions."""
        data = handler(self)
        if data.get("target") is None:
            data.pop("target", None)
        return data


class RewardSpec(_Strict):
    """Accepted so that specs written for earlier versions still validate; ignored.

    Every candidate is now projected onto the budget before it is scored, so all candidates cost the same
    and the reward is the accuracy proxy alone: a compression bonus or an over-budget penalty has nothing
    left to weigh.
    """

    accuracy_weight: NonNegative = 1.0
    compression_weight: NonNegative = 0.1
    budget_penalty: NonNegative = 2.0


class FinalistSpec(_Strict):
    """The search's last stage: its best candidates and the uniform allocation are each finetuned, and the
    one that scores best on validation images the search never scored is returned."""

    count: Annotated[int, Field(ge=1, le=32)] = Field(
        default=3, description="the search's best distinct candidates that are finetuned beside the uniform one")
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.005, description="validation accuracy (a fraction) by which a candidate must beat the uniform "
        "allocation to be chosen over it")
    standard_errors: Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        default=1.0, description="standard errors of the paired per-image difference on the held-out images "
        "by which a candidate must also beat the uniform allocation (0: the margin alone decides)")
    epochs: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="finetune epochs that decide between the finalists (the winner is then "
        "finetuned with the job's recipe); none: each finalist gets the job's recipe and the winner is returned "
        "as it is")


class PruneSpec(_Strict):
    agent: AgentName = "sensitivity"
    budget: BudgetSpec = BudgetSpec()
    steps: Annotated[int, Field(ge=1, le=100_000)] = 16
    samples_per_step: Annotated[int, Field(ge=2, le=1024)] = 16
    criterion: CriterionName = Field(
        default="l1", description="how channels are chosen inside a layer once its count is set; the agents "
        "l1 and random name their criterion themselves")
    eval_samples: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="cap on the fixed validation images every candidate is scored on; none: "
        "the whole search half of the validation split")
    min_channels: Annotated[int, Field(ge=1, le=4096)] = 1
    round_to: Annotated[int, Field(ge=1, le=256)] | None = None
    reward: RewardSpec = Field(default=RewardSpec(), description="ignored; accepted for older specs")
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    bn_recalibration: bool = True
    layer_finetune_steps: Annotated[int, Field(ge=0, le=100_000)] = 20
    proxy: ProxyName = Field(
        default="calibrated-log-likelihood", description="what a search scores candidates by before finetuning: "
        "the mean log-likelihood of the true class, the same at each candidate's best temperature, or top-1")
    finalists: FinalistSpec | None = Field(
        default=FinalistSpec(), description="none: the search's best candidate is finetuned and returned as it is")

    @field_validator("finalists")
    @classmethod
    def _no_more_finalists_than_candidates(cls, finalists: FinalistSpec | None,
                                           info: ValidationInfo) -> FinalistSpec | None:
        steps, samples = info.data.get("steps"), info.data.get("samples_per_step")
        if finalists is not None and steps is not None and samples is not None and finalists.count > steps * samples:
            raise ValueError(f"count {finalists.count} is more than the {steps * samples} candidates the search "
                             "scores (steps x samples_per_step)")
        return finalists


class ExportSpec(_Strict):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["safetensors", "pt2", "onnx"])
    latency_batches: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 64], max_length=4,
        description="batch sizes at which the report times the pruned model against the unpruned one; [] for none")

    @model_validator(mode="after")
    def _safetensors_is_canonical(self) -> ExportSpec:
        if "safetensors" not in self.formats:
            raise ValueError("must include 'safetensors': the other formats are checked against it")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("lists a format twice")
        if len(set(self.latency_batches)) != len(self.latency_batches):
            raise ValueError("lists a latency batch size twice")
        return self


class JobSpec(_Strict):
    name: Annotated[Text, Field(max_length=200)] = "rlprune-job"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    pretrain: TrainSpec = TrainSpec()
    prune: PruneSpec = PruneSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    export: ExportSpec = ExportSpec()
    baselines: list[BaselineName] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    time_limit_seconds: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        default=None, description="the job fails with time_limit once it has run this long; default: the "
        "service's maximum (none for a local run)")

    @model_validator(mode="before")
    @classmethod
    def _image_size_follows_the_architecture(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        model, dataset = data.get("model", {}), data.get("dataset", {})
        arch = model.get("arch", "vgg16") if isinstance(model, dict) else getattr(model, "arch", None)
        if isinstance(arch, str) and isinstance(dataset, dict) and "image_size" not in dataset:
            data = {**data, "dataset": {**dataset, "image_size": default_image_size(arch)}}
        return data

    @model_validator(mode="after")
    def _pretrained_weights_come_from_somewhere(self) -> JobSpec:
        if self.pretrain.epochs == 0 and not self.model.checkpoint:
            raise ValueError("pretrain.epochs is 0, so model.checkpoint must name a safetensors file to start from")
        smallest = image_size_for(self.model.arch, MIN_IMAGE_SIZE)
        if self.model.arch not in ANY_IMAGE_SIZE and self.dataset.image_size < smallest:
            raise ValueError(f"dataset.image_size must be at least {smallest} for {self.model.arch}, which "
                             "downsamples the image to a single pixel there")
        metric = self.prune.budget.metric
        if why := METRIC_REFUSALS.get(metric, {}).get(self.model.arch):
            allowed = [m for m in get_args(MetricName) if self.model.arch not in METRIC_REFUSALS.get(m, {})]
            raise ValueError(f"prune.budget.metric must be {' or '.join(allowed)} for {self.model.arch}: {why}")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError("baselines lists a method twice")
        finalists = self.prune.finalists
        if finalists is not None and finalists.epochs is not None and finalists.epochs > self.finetune.epochs:
            raise ValueError(f"prune.finalists.epochs ({finalists.epochs}) must not exceed finetune.epochs "
                             f"({self.finetune.epochs}): the finalists' finetune is a shortened one")
        return self

    @classmethod
    def from_text(cls, text: str) -> JobSpec:
        """Parse JSON or YAML (JSON is a subset of YAML, so one parser serves both)."""
        try:
            data = yaml.load(text, Loader=_JsonNumbers)  # a SafeLoader: builds plain data only
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML or JSON: {yaml_problem(exc)}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SpecError("a spec must be a mapping of fields, not a " + type(data).__name__)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc, cls)) from exc

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SpecError(f"cannot read spec {path}: {exc.strerror}") from exc
        return cls.from_text(text)
