"""BitFit (PEFT's BEFT): only a bias offset per linear layer and the head train.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/bitfit_bert.py --output_dir out/bitfit
    python recipes/bitfit_bert.py --learning_rate 1e-3 --max_train_samples 2000 --output_dir out/bitfit
    python recipes/bitfit_bert.py recipes/configs/bitfit_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("bitfit")
