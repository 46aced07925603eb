"""Other formats: Hugging Face (``convert_codellama``, ``export_hf``, ``hf_compat``), GPT-NeoX
(``convert_neox``, ``export_neox``, ``gptneox_format``), checking a conversion
(``verify_conversion``, ``reference``: the source model's loss streamed layer by layer) and
``publish``: an output directory written all or nothing."""
