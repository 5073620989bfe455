"""Qwen-Image's canvas positions (``positions="canvas"``, :mod:`multidiffusion.models.qwenimage`): a
view's rotary positions made those of its place in the canvas's centred grid, for one call of the
transformer or of its ControlNet (moved here from ``qwenimage.py`` so that both modules use it)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["placed_rope"]


class placed_rope:
    """With ``place`` (top, left, canvas rows, canvas columns in tokens), the rotary positions of the
    transformer (or its ControlNet) for the call are those of the view's place in the canvas's
    centred grid (a reference crop of the view's size at the same place, its own frame index; a
    whole-image reference on its own centred grid) and the text's after the canvas's; the module's
    ``forward`` is wrapped on the instance and restored after."""

    def __init__(self, transformer: Any, place: list[int] | None):
        self.rope, self.place = transformer.pos_embed, place

    def __enter__(self) -> None:
        if self.place is None:
            return
        rope, (top, left, rows, cols) = self.rope, self.place
        original = rope.forward

        def placed(video_fhw: Any, device: Any = None, max_txt_seq_len: Any = None) -> Any:
            shapes = video_fhw[0] if isinstance(video_fhw, list) and isinstance(video_fhw[0], list) else video_fhw
            shapes = shapes if isinstance(shapes, list) else [shapes]
            freqs = []
            for idx, (frames, h, w) in enumerate(shapes):
                if (h, w) != tuple(shapes[0][1:]):  # a whole-image reference: centred on its own grid
                    freqs.append(rope._compute_video_freqs(frames, h, w, idx, device))
                    continue
                grid = rope._compute_video_freqs(frames, rows, cols, idx, device).view(frames, rows, cols, -1)
                r = torch.arange(top, top + h, device=grid.device)
                c = torch.arange(left, left + w, device=grid.device) % cols
                freqs.append(grid[:, r][:, :, c].reshape(frames * h * w, -1))
            start = max(rows // 2, cols // 2)
            if start + int(max_txt_seq_len) > rope.pos_freqs.shape[0]:
                raise ValueError(
                    f'positions="canvas": the canvas ({rows} x {cols} tokens) puts the text past the transformer\'s '
                    f'rotary table ({rope.pos_freqs.shape[0]} positions); use positions="view"'
                )
            text = rope.pos_freqs.to(device)[start : start + int(max_txt_seq_len)]
            return torch.cat(freqs), text

        rope.forward = placed
        del original

    def __exit__(self, *exc: Any) -> None:
        if self.place is not None:
            del self.rope.forward
