"""LoRA + BitFit combined: low-rank updates of the layers that read the hidden state plus bias offsets everywhere.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/lora_bitfit_bert.py --output_dir out/lora_bitfit
    python recipes/lora_bitfit_bert.py --lora_r 8 --max_train_samples 2000 --output_dir out/lora_bitfit
    python recipes/lora_bitfit_bert.py recipes/configs/lora_bitfit_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("lora+bitfit")
