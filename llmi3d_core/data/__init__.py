"""Datasets: the on-disk format, the IG3D-Synth generator, queries, the torch Dataset and the CLI.

Modules import lazily (torch and OpenCV only where needed):
    format        the file layout and its records (docs/dataset_format.md)
    codec         records <-> JSON lines, the checked decoding being the format's validation
    reader        read_dataset: a whole directory, cross-references checked
    writer        DatasetWriter: records and pictures, streamed and checked
    splits        select_queries: "test:novel@target" and the like
    synth         the IG3D-Synth generator (config, one image, whole dataset, CLI)
    synth_shapes  its category catalogue: size priors and multi-primitive meshes
    synth_scene   its cameras, rooms, streets and object placement
    synth_render  its painter's-order rasteriser with an owner map
    queries       make_queries: captions, questions, prompts, negatives, multi-target captions
    query_text    their words: descriptions, carrier phrases, the needs table, prompt texts
    query_config  QueryConfig: counts per image and the verifying margins
    captions      single-target captions and the spatial-relation judging that verifies them
    extra_queries negative queries and multi-target captions
    dataset       GroundingDataset and collate_grounding for training
    contact_sheet a PNG of samples with their 3D boxes drawn
    cli           `llmi3d data ...`
"""
