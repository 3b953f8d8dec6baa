"""Run by test_lora_training.py (one process, or under torchrun): megatron-core's logits of a base
checkpoint with a trained LoRA adapter applied (``mcore/lora.py``: inject, then load the
adapter's global tensors into this rank's slices). Rank 0 of the last pipeline stage saves
them.

    python lora_forward.py MG_DIR ADAPTER_DIR IDS.pt OUT.pt TP PP
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def main() -> None:
    mg, adapter, ids_path, out = sys.argv[1:5]
    tp, pp = int(sys.argv[5]), int(sys.argv[6])
    warnings.filterwarnings("ignore")
    import torch
    from megatron.core import parallel_state as ps
    from safetensors.torch import load_file

    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import device as D
    from llmbuild.mcore import lora as ML
    from llmbuild.mcore import model as M

    torch.set_num_threads(1)
    D.init_backend("cpu", tp=tp, pp=pp, seed=1)
    desc = M.load_description(mg)
    _, model = M.build_for_this_rank(desc, tp=tp, pp=pp, device="cpu", parallel_output=False)
    ckpt.load(mg, model)
    cfg = json.loads((Path(adapter) / "lora_config.json").read_text())
    ML.inject(
        model,
        r=cfg["r"],
        alpha=cfg["alpha"],
        dropout=0.0,
        targets=cfg["target_modules"],
        seed=0,
    )
    ML.load_adapter(model, load_file(str(Path(adapter) / "adapter.safetensors")))
    model.eval()
    ids = torch.load(ids_path)
    b, s = ids.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, -1)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            hidden = torch.empty(s, b, desc.args.hidden_size)
            torch.distributed.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        y = model(ids, pos, M.causal_attention_mask(s))
        if not ps.is_pipeline_last_stage():
            torch.distributed.send(y.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        elif ps.get_tensor_model_parallel_rank() == 0:
            torch.save(y[..., : desc.args.vocab_size].contiguous(), out)
    D.shutdown()


if __name__ == "__main__":
    main()
