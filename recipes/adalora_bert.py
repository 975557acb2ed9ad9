"""AdaLoRA: LoRA whose rank budget is reallocated by importance during training.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/adalora_bert.py --output_dir out/adalora
    python recipes/adalora_bert.py --adalora_init_r 12 --adalora_target_r 4 --max_train_samples 2000 --output_dir out/adalora
    python recipes/adalora_bert.py recipes/configs/adalora_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("adalora")
