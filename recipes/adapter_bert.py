"""Bottleneck adapters (Houlsby or Pfeiffer placement) after attention and feed-forward blocks.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/adapter_bert.py --output_dir out/adapter
    python recipes/adapter_bert.py --adapter_reduction_factor 16 --adapter_placement pfeiffer --max_train_samples 2000 --output_dir out/adapter
    python recipes/adapter_bert.py recipes/configs/adapter_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("adapter")
