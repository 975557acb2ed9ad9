"""Prefix tuning: trained key/value prefixes in every attention layer.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/prefix_bert.py --output_dir out/prefix
    python recipes/prefix_bert.py --num_virtual_tokens 20 --prefix_projection true --max_train_samples 2000 --output_dir out/prefix
    python recipes/prefix_bert.py recipes/configs/prefix_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("prefix")
