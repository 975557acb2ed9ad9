"""P-tuning: virtual tokens produced by a small MLP prompt encoder.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/p_tuning_bert.py --output_dir out/p_tuning
    python recipes/p_tuning_bert.py --num_virtual_tokens 20 --max_train_samples 2000 --output_dir out/p_tuning
    python recipes/p_tuning_bert.py recipes/configs/p_tuning_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("p_tuning")
