"""tamp_qwen2_audio: lmms-eval's qwen2_audio for tamp artifacts (needs librosa: `pip install -e .[audio]`)."""

from __future__ import annotations

from typing import Any

try:
    from lmms_eval.models.simple.qwen2_audio import Qwen2_Audio
except ModuleNotFoundError as exc:  # the stock wrapper imports librosa at module level
    raise ModuleNotFoundError(f"tamp_qwen2_audio needs {exc.name}: pip install -e '.[audio]'") from exc

from harness.wrappers.common import TampWrapperMixin, distributed, pick_device


class TampQwen2Audio(TampWrapperMixin, Qwen2_Audio):
    """`pretrained` = an artifact directory (or any Qwen2-Audio checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        dev = pick_device(device)
        # the stock wrapper honours `device` only with device_map="auto" in a single process
        super().__init__(pretrained=pretrained, device=dev, device_map=device_map or ("" if distributed() else "auto"),
                         **kwargs)
        if self.device_map == "auto" and not str(dev).startswith("cuda"):
            # the stock generate_until sends inputs to "cuda" whenever device_map is "auto"; the model is on dev
            self.device_map = str(dev)
        self._tamp_after_load()

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("tamp_qwen2_audio serves generation tasks only")
