"""DoRA: weight-decomposed LoRA, a learned magnitude per output on top of the low-rank update.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/dora_bert.py --output_dir out/dora
    python recipes/dora_bert.py --lora_r 8 --max_train_samples 2000 --output_dir out/dora
    python recipes/dora_bert.py recipes/configs/dora_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("dora")
