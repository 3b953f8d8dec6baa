"""The file formats conversion reads and writes, each with both of its sides in one module.

- ``safetensors_io``: Hugging Face safetensors, read lazily (mapped) and written as shards;
- ``torch_record``: ``torch.save``'s record format (writer and mapped reader), without torch;
- ``dcp_meta``: torch.distributed.checkpoint's ``.metadata`` pickle (stand-ins, allow-list);
- ``torch_dist``: megatron-core's torch_dist layout and its writer; ``torch_dist_reader``: its
  reader;
- ``backends``: who writes the records and metadata, ``numpy`` (the emulation) or ``torch``.

``torch_record``, ``dcp_meta`` and ``torch_dist`` reproduce private formats of torch 2.13 and
megatron-core 0.16.1: the upgrade checklist in the README names what to re-check on a new
version. Nothing here knows an architecture; the tensors come from ``llmbuild.convert``.
"""

#: Who writes a torch_dist checkpoint's records and metadata (``backends``); numpy: the default.
BACKENDS = ("numpy", "torch")
