"""LoRA on a BERT-style encoder (default: MiniLM-L6 on the embedded tweets).

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/lora_bert.py --output_dir out/lora
    python recipes/lora_bert.py --lora_r 16 --lora_alpha 32 --max_train_samples 2000 --output_dir out/lora
    python recipes/lora_bert.py recipes/configs/lora_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("lora")
