"""IA3: learned vectors rescale keys, values and feed-forward activations (~0.1% of weights).

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/ia3_bert.py --output_dir out/ia3
    python recipes/ia3_bert.py --learning_rate 3e-3 --max_train_samples 2000 --output_dir out/ia3
    python recipes/ia3_bert.py recipes/configs/ia3_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("ia3")
