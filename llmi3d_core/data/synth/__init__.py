"""IG3D-Synth: the synthetic benchmark generator (scenes, rendering, and the queries about them).

    generator     SynthConfig, one image, a whole dataset, the `llmi3d data synth` CLI
    shapes        the category catalogue: size priors and multi-primitive meshes
    scene         cameras, rooms, streets and object placement
    render        a painter's-order rasteriser with an owner map
    queries       make_queries: captions, questions, prompts, negatives, multi-target captions
    query_text    their words: descriptions, carrier phrases, the needs table, prompt texts
    query_config  QueryConfig: counts per image and the verifying margins
    captions      single-target captions and the spatial-relation judging that verifies them
    extra_queries negative queries and multi-target captions

Torch-free: generator workers import only numpy and OpenCV.
"""
