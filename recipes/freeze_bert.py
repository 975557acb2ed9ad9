"""Layer freezing: the encoder is frozen except its top layers; the new head trains.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/freeze_bert.py --output_dir out/freeze
    python recipes/freeze_bert.py --freeze_trainable_layers 2 --max_train_samples 2000 --output_dir out/freeze
    python recipes/freeze_bert.py recipes/configs/freeze_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("freeze")
