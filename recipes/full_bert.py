"""Full fine-tuning: every weight trains (the reference row of every leaderboard).

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/full_bert.py --output_dir out/full
    python recipes/full_bert.py --learning_rate 5e-5 --max_train_samples 2000 --output_dir out/full
    python recipes/full_bert.py recipes/configs/full_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("full")
