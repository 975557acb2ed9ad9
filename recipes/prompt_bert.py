"""Prompt tuning: a trained soft prompt before the input, initialised from text.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/prompt_bert.py --output_dir out/prompt
    python recipes/prompt_bert.py --num_virtual_tokens 20 --prompt_init_text 'Classify the sentiment:' --max_train_samples 2000 --output_dir out/prompt
    python recipes/prompt_bert.py recipes/configs/prompt_bert.yaml       # flags after the file override it

Takes every run_glue.py flag (--model_name_or_path, --train_file, --num_train_epochs, ...); `--help` lists them.
"""

from ft_plugin.cli import run_recipe

if __name__ == "__main__":
    run_recipe("prompt")
