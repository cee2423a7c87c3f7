"""Members that are not Hugging Face models: PyTorch networks (and scikit-learn) on images, then fused.

scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes; no download) split 70/30 with a fixed seed.
Members:
  * mlp       TorchMember: 64 -> 128 -> 10 multilayer perceptron
  * cnn       TorchMember: a two-layer convolutional network
  * logreg    SklearnMember: multinomial logistic regression on the pixels
Every member is trained by fusion (the torch ones through the same Accelerate loop as everything else) and
cross-fitted, so the linear and stacking fusers learn from out-of-fold outputs; the validation split is scored.

    python recipes/digits_torch_heads.py            # about half a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from fusion import Ensemble, LinearFuser, MeanFuser, SklearnMember, StackingFuser, TorchMember, TrainConfig


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear layer over 8x8 single-channel images given as 64 pixels."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classify = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, classes))

    def forward(self, pixels):
        return self.classify(self.features(pixels.view(-1, 1, 8, 8)))


def mlp(classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, classes))


def members(epochs: int, quiet: bool) -> list:
    config = TrainConfig(learning_rate=2e-3, max_epochs=epochs, batch_size=64, weight_decay=1e-4, patience=10,
                         show_progress=not quiet)
    return [TorchMember(mlp(), name="mlp", train_config=config, show_progress=not quiet),
            TorchMember(SmallCNN(), name="cnn", train_config=config, show_progress=not quiet),
            SklearnMember(LogisticRegression(C=0.05, max_iter=2000), name="logreg")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--rows", type=int, default=0, help="use only this many images (0 = all)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    digits = load_digits()
    pixels, labels = (digits.data / 16.0).astype(np.float32), digits.target
    if args.rows:
        pixels, labels = pixels[: args.rows], labels[: args.rows]
    x_train, x_val, y_train, y_val = train_test_split(pixels, labels, test_size=0.3, random_state=0, stratify=labels)
    train, validation = {"pixels": x_train, "label": y_train}, {"pixels": x_val, "label": y_val}
    print(f"digits: {len(x_train)} train, {len(x_val)} validation images")

    ensemble = Ensemble(members(args.epochs, args.quiet), labels=[str(d) for d in range(10)], text_column="pixels")
    print(f"\n{'model':<18}{'accuracy':>10}{'log-loss':>10}")
    for i, fuser in enumerate((MeanFuser(), LinearFuser(), StackingFuser())):
        ensemble.fuser = fuser
        scores = ensemble.fit(train, validation).metrics_["scores"]
        shown = scores.items() if i == 0 else [(f"fuser:{fuser.kind}", scores[f"fuser:{fuser.kind}"])]
        for name, score in shown:
            print(f"{name:<18}{score['accuracy']:>10.4f}{score['log_loss']:>10.4f}")


if __name__ == "__main__":
    main()
