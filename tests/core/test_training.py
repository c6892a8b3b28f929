"""Training: learnable synthetic data, resuming to the same weights, a schedule for any number of steps."""

import pytest
import torch

from rlprune_core.data import load_dataset
from rlprune_core.events import StopCheck, Stopped
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import DatasetSpec, TrainSpec
from rlprune_core.training import _schedule, evaluate, reestimate_batchnorm, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(DatasetSpec(name="synthetic", image_size=32, max_train_samples=2000), seed=0)


def _model(data):
    torch.manual_seed(0)
    return build_model(ModelConfig("resnet20", data.num_classes, data.contract.channels, width=0.125))


def test_synthetic_data_is_learnable(synthetic, tmp_path):
    model = _model(synthetic)
    spec = TrainSpec(epochs=4, batch_size=64, lr=0.05)
    train(model, synthetic.train, synthetic.val, spec, device=CPU, flip=False, seed=0,
          checkpoint=tmp_path / "ckpt.pt", on_epoch=lambda r: None, stop=StopCheck(None))
    assert evaluate(model, synthetic.test, CPU) > 0.5  # ten classes: chance is 0.1


def test_batchnorm_statistics_are_re_estimated_on_a_copy(synthetic):
    """The copy's first BatchNorm holds the plain mean and variance of its conv's outputs on the images; the
    model it came from keeps its own statistics."""
    model = _model(synthetic).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = synthetic.train.images[:96]
    copy = reestimate_batchnorm(model, images, CPU, batch_size=96)
    with torch.no_grad():
        out = copy.conv1(images)
    assert not copy.training
    torch.testing.assert_close(copy.bn1.running_mean, out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(copy.bn1.running_var, out.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_stopped_training_resumes_to_the_same_weights(synthetic, tmp_path, schedule):
    spec = TrainSpec(epochs=3, batch_size=128, lr=0.05, schedule=schedule)
    straight = _model(synthetic)
    train(straight, synthetic.train, synthetic.val, spec, device=CPU, flip=True, seed=1,
          checkpoint=tmp_path / "a.pt", on_epoch=lambda r: None, stop=StopCheck(None))

    interrupted = _model(synthetic)
    epochs_seen = []

    def stop_after_first_epoch() -> bool:
        return len(epochs_seen) >= 1

    with pytest.raises(Stopped):
        train(interrupted, synthetic.train, synthetic.val, spec, device=CPU, flip=True, seed=1,
              checkpoint=tmp_path / "b.pt", on_epoch=lambda r: epochs_seen.append(r.epoch),
              stop=StopCheck(stop_after_first_epoch, interval=0.0))
    resumed_at = []
    resumed = _model(synthetic)
    train(resumed, synthetic.train, synthetic.val, spec, device=CPU, flip=True, seed=1,
          checkpoint=tmp_path / "b.pt", on_epoch=lambda r: epochs_seen.append(r.epoch),
          stop=StopCheck(None), on_resume=resumed_at.append)
    assert resumed_at == [1] and epochs_seen == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_any_number_of_steps_has_a_schedule(steps, schedule):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = _schedule(optimizer, TrainSpec(epochs=1, schedule=schedule), steps)
    for _ in range(steps):
        assert 0 < optimizer.param_groups[0]["lr"] <= 0.1  # the rate each optimizer step uses
        optimizer.step()
        scheduler.step()
