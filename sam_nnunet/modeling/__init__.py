"""Network parts of the SAM networks (encoder, LoRA, prompts, decoders) and their compositions."""
