"""Modular style transfer on content that ships with scikit-learn: train, score, add a style.

    python -m pipelines.commands.style [--content photos|digits] [--size 16]
                              [--styles sepia posterise sketch emboss] [--new-style blur]
                              [--seconds 120] [--out results/style]

Content: patches of scikit-learn's two sample photos (downscaled 4x, the right quarter of each
photo held out) or the digits (20% held out). Style targets: ``lincore.filters`` applied to
the content. One shared conditional ``g`` and one depthwise-conv operator per style are trained
for ``--seconds``; then the new style is fitted twice for a quarter of that time: as a new
operator with ``g`` frozen, and from scratch (its own ``g``). Reports per-style PSNR against the
filter on held-out content, writes ``metrics.json``, interpolation strips and a style grid.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from lincore import filters
from lincore.generators import StyleTransfer
from lincore.metrics import psnr
from pipelines import config as config_mod
from pipelines import figures
from pipelines.atomic import write_json
from pipelines.entry import cli
from pipelines.errors import ConfigError
from pipelines.training.timed_fit import fit_for

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def photo_patches(size: int, downscale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``size x size`` RGB patches (half-overlapping); the right quarter of each photo is held
    out, and no patch straddles the cut."""
    from sklearn.datasets import load_sample_images

    train, held = [], []
    for image in load_sample_images().images:
        im = torch.from_numpy(np.array(image, dtype=np.float32) / 255).permute(2, 0, 1)
        im = F.interpolate(im[None], scale_factor=1 / downscale, mode="area")[0]
        h, w = im.shape[1:]
        cut, step = int(0.75 * w), max(1, size // 2)
        for y in range(0, h - size + 1, step):
            for x in range(0, w - size + 1, step):
                patch = im[:, y : y + size, x : x + size]
                if x + size <= cut:
                    train.append(patch)
                elif x >= cut:
                    held.append(patch)
    if not train or not held:
        raise ConfigError(f"--size {size} is too large for the sample photos; try 16 or 32")
    return torch.stack(train), torch.stack(held)


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16).unsqueeze(1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_held = len(x) // 5
    return x[perm[n_held:]], x[perm[:n_held]]


def targets(content: torch.Tensor, styles: list[str]) -> torch.Tensor:
    """``(B, 1 + K, C, H, W)``: content, then each style's filter output."""
    return torch.stack([content, *(filters.apply(s, content) for s in styles)], 1)


@torch.no_grad()
def style_psnr(model: StyleTransfer, held: torch.Tensor, style: int, name: str) -> float:
    return psnr(model.transfer(held, style).clamp(0, 1), filters.apply(name, held))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--content", choices=("photos", "digits"), default="photos")
    p.add_argument("--size", type=int, default=16, help="patch size for --content photos")
    p.add_argument("--styles", nargs="+", default=["sepia", "posterise", "sketch", "emboss"])
    p.add_argument("--new-style", default="blur", help="fitted afterwards, with g frozen")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="results/style")
    args = p.parse_args(argv)
    for name in [*args.styles, args.new_style]:
        if name not in filters.FILTERS:
            raise ConfigError(f"unknown style {name!r}; known: {', '.join(filters.FILTERS)}")
    train, held = photo_patches(args.size) if args.content == "photos" else digit_images()
    if train.shape[1] != 3 and "sepia" in [*args.styles, args.new_style]:
        raise ConfigError("sepia needs RGB content; drop it for --content digits")
    out = config_mod.output_path(args.out, "--out")
    shape = tuple(train.shape[1:])
    print(f"content: {len(train)} train / {len(held)} held-out images of shape {shape}")

    torch.manual_seed(0)
    model = StyleTransfer.build(shape, len(args.styles), depth=args.depth, hidden=args.hidden)
    model.initialize_from(train[:64])
    steps, secs = fit_for(
        model,
        targets(train, args.styles),
        seconds=args.seconds,
        lr=args.lr,
        batch_size=32,
        label="styles",
    )
    rows = [
        {
            "style": name,
            "route": "joint (g + operators)",
            "steps": steps,
            "seconds": secs,
            "psnr": style_psnr(model, held, i, name),
            "identity_psnr": psnr(held, filters.apply(name, held)),
        }
        for i, name in enumerate(args.styles)
    ]

    # modularity: a new style as a new operator with g frozen, vs a model from scratch
    new = args.new_style
    k = model.add_style()
    model.freeze_network()
    for op in list(model.operators)[:k]:
        op.requires_grad_(False)
    model.fit_styles = [k]
    budget = args.seconds / 4
    steps, secs = fit_for(
        model, targets(train, [new]), seconds=budget, lr=1e-2, batch_size=32, label="new operator"
    )
    rows.append(
        {
            "style": new,
            "route": "new operator, g frozen",
            "steps": steps,
            "seconds": secs,
            "psnr": style_psnr(model, held, k, new),
        }
    )
    torch.manual_seed(0)
    scratch = StyleTransfer.build(shape, 1, depth=args.depth, hidden=args.hidden)
    scratch.initialize_from(train[:64])
    steps, secs = fit_for(
        scratch,
        targets(train, [new]),
        seconds=budget,
        lr=args.lr,
        batch_size=32,
        label="from scratch",
    )
    rows.append(
        {
            "style": new,
            "route": "from scratch (g + operator)",
            "steps": steps,
            "seconds": secs,
            "psnr": style_psnr(scratch, held, 0, new),
            "identity_psnr": psnr(held, filters.apply(new, held)),
        }
    )
    for r in rows:
        print(
            f"{r['style']:>10}  {r['route']:<28} {r['steps']:>6} steps {r['seconds']:6.1f} s  "
            f"PSNR {r['psnr']:.2f} dB"
        )

    names = [*args.styles, new]
    with torch.no_grad():
        # the most textured held-out examples (every other one of the top 12 by pixel spread,
        # so that half-overlapping patches do not repeat): a flat patch of sky shows no style
        textured = held.flatten(1).std(1).argsort(descending=True)[:12:2]
        sample = held[textured]
        grid = [sample] + [model.transfer(sample, i).clamp(0, 1) for i in range(len(names))]
        figures.save_png(
            figures.labelled_rows(
                torch.stack(grid).numpy(),
                row_labels=["content", *names],
                col_labels=[f"#{j + 1}" for j in range(len(sample))],
                title="each row: the held-out examples in one style (swap A, keep g)",
            ),
            out / "styles.png",
        )
        for a, b in ((0, 1), (2, 3), (0, k)):
            if max(a, b) < len(names):
                strip = model.interpolate(sample[:4], a, b, ALPHAS).clamp(0, 1)
                figures.save_png(
                    figures.labelled_rows(
                        strip.transpose(0, 1).numpy(),  # one row per example
                        row_labels=[f"#{j + 1}" for j in range(strip.shape[1])],
                        col_labels=[f"{float(al):.2f}" for al in ALPHAS],
                        title=f"{names[b]} -> {names[a]}: alpha A_a + (1 - alpha) A_b "
                        "(alpha by column)",
                    ),
                    out / f"interpolation_{names[b]}_to_{names[a]}.png",
                )
    result = {"content": args.content, "shape": list(shape), "rows": rows}
    write_json(out / "metrics.json", result)
    print(f"wrote {out}/ (metrics.json, styles.png, interpolation_*.png)")
    return result


if __name__ == "__main__":
    cli(main)()
