"""`mobilereid inspect`: where an artifact spends its time and where it loses accuracy, op by op.

Layers: `executorch_ops` (ETDump profiling of a .pte), `executorch_numerics` (a .pte's op outputs through a
rebuild one op per XNNPACK partition), `litert_ops` (per-op timing and intermediate tensors of a
.tflite), `numerics` (error statistics, numpy only), `float_reference` (the float model's tensors under the
artifact's names), `run` (the command), `report` (Markdown, JSON, PNG, Model Explorer node data).
"""
