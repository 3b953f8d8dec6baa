"""Run under ``torchrun --nproc_per_node N`` (gloo, CPU) by test_parity.py: load a converted
checkpoint into megatron-core GPTModels at TP x PP, run one forward pass over fixed token ids
(pipeline stages hand the hidden states on by send/recv), save the logits (last stage, rank of
tensor-parallel rank 0), and save the loaded model again with megatron-core's own
dist_checkpointing, so the test can compare that layout with the converter's.

    torchrun --standalone --nproc_per_node 2 dist_forward.py MG_DIR TP PP IDS.pt OUT_DIR
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def main() -> None:
    mg, tp, pp, ids_path, out = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
        sys.argv[5],
    )
    warnings.filterwarnings("ignore")
    import torch
    from megatron.core import parallel_state as ps

    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import device as D
    from llmbuild.mcore import model as M

    torch.set_num_threads(1)
    D.init_backend("cpu", tp=tp, pp=pp, seed=1)
    desc = M.load_description(mg)
    split = desc.extra.get("pp_layers")
    overrides = (
        {
            "num_layers_in_first_pipeline_stage": split[0],
            "num_layers_in_last_pipeline_stage": split[-1],
        }
        if split
        else {}
    )
    _, model = M.build_for_this_rank(
        desc, tp=tp, pp=pp, device="cpu", parallel_output=False, **overrides
    )
    ckpt.load(mg, model)
    model.eval()
    ids = torch.load(ids_path)
    b, s = ids.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, -1)
    mask = M.causal_attention_mask(s)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():
            hidden = torch.empty(s, b, desc.args.hidden_size)
            torch.distributed.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        y = model(ids, pos, mask)
        if not ps.is_pipeline_last_stage():
            torch.distributed.send(y.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        elif ps.get_tensor_model_parallel_rank() == 0:
            torch.save(y[..., : desc.args.vocab_size].contiguous(), Path(out) / "logits.pt")
    saved = Path(out) / "resaved"
    ckpt.save(saved, 0, model)
    if torch.distributed.get_rank() == 0:
        M.save_description(saved, desc)
    D.shutdown()


if __name__ == "__main__":
    main()
