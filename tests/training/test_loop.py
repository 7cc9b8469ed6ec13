"""The worker loop's pieces that need no Ray cluster: the frozen forward and early stopping."""

from types import SimpleNamespace

import torch

from training.loop import StageNet, record_epoch


def _val(f1: float) -> dict:
    return {"macro_f1": f1, "accuracy": 0.5, "macro_roc_auc": None, "ece": 0.1}


def test_a_frozen_backbone_gets_no_gradient_and_the_head_does():
    backbone, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    net = StageNet(torch.nn.Sequential(backbone, head), head, backbone)
    net(torch.randn(5, 4)).sum().backward()
    assert backbone.weight.grad is None and head.weight.grad is not None


def test_record_epoch_counts_stale_epochs_and_keeps_the_best_score():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    run = SimpleNamespace(
        stage="stage1",
        world=1,
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1),
        state={"epoch": 0, "best_score": -1.0, "stale": 0, "history": []},
    )
    improved = [record_epoch(run, epoch, 1.0, 10.0, _val(f1), 0.9)[1] for epoch, f1 in enumerate([0.5, 0.7, 0.6, 0.7])]
    assert improved == [True, True, False, False]
    assert run.state["best_score"] == 0.7 and run.state["stale"] == 2 and run.state["epoch"] == 4
    assert [row["val_macro_f1"] for row in run.state["history"]] == [0.5, 0.7, 0.6, 0.7]
    assert run.state["history"][0]["lr"] == 0.1 and run.state["history"][0]["stage"] == "stage1"
