"""fedkd.optim's SGD and Adam take the same steps as torch.optim's, bit for bit on CPU, and
constructing them does not import torch._dynamo (the cost they exist to avoid)."""

import copy
import subprocess
import sys

import pytest
import torch

from fedkd.models import build_model
from fedkd.optim import SGD, Adam


def _trajectories(make_ours, make_theirs, model_name, shape, steps=25):
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10)
    twin = copy.deepcopy(model)
    ours, theirs = make_ours(model.parameters()), make_theirs(twin.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, *shape, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
        yield model, twin


@pytest.mark.parametrize("model_name, shape", [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28))])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_each_step_equals_torch_optims_bit_for_bit(kind, model_name, shape):
    if kind == "sgd":
        ours = lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)  # noqa: E731
        theirs = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    else:
        ours = lambda p: Adam(p, lr=3e-3)  # noqa: E731
        theirs = lambda p: torch.optim.Adam(p, lr=3e-3)  # noqa: E731
    moved = False
    for model, twin in _trajectories(ours, theirs, model_name, shape):
        for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
            assert torch.equal(a, b), name
        moved = True
    start = build_model(model_name, shape, 10)
    assert moved and not all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), model.state_dict().values()))


def test_training_with_them_imports_no_dynamo():
    code = ("import sys, torch; from fedkd.optim import SGD, Adam; "
            "m = torch.nn.Linear(4, 2); o = SGD(m.parameters(), lr=0.1, momentum=0.9); "
            "m(torch.randn(3, 4)).sum().backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); o.step(); "
            "a = Adam(m.parameters(), lr=0.1); a.zero_grad(); m(torch.randn(3, 4)).sum().backward(); a.step(); "
            "print('torch._dynamo' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    # the control: torch.optim's own import it
    code = "import sys, torch; torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1); print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"
