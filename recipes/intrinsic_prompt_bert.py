"""Intrinsic prompt tuning: a soft prompt trained in a 64-dimensional subspace.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/intrinsic_prompt_bert.py --output_dir out/intrinsic_prompt
    python recipes/intrinsic_prompt_bert.py --intrinsic_dim 64 --max_train_samples 2000 --output_dir out/intrinsic_prompt
    python recipes/intrinsic_prompt_bert.py recipes/configs/intrinsic_prompt_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("intrinsic_prompt")
