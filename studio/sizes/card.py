"""What the gemma4-lite-round2 model card claims about sizes (its "Compression Summary" and "Total
Model Size"), for the `estimate` command and the plan tab to set beside the estimate."""

CARD_CLAIMS = {
    "base_bytes": 16e9,  # "~16 GB for the original bfloat16 model"
    "export_bytes": 9.9e9,  # "Total Model Size: ~9.9 GB"
    "total_reduction": 0.38,
    "ffn_params_removed": 0.15,  # prose claim; its own width table gives 10.7%
    "quantized_modules_memory": 0.25,
}
