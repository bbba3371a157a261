"""Phase Two on the device: task-relevance reward, preference pairs, DPO on the steering vector, gate, registry.

Entry points (none of them imports torch until training starts):

    from edge_agent.adapt.loop import run_adapt                 # the whole loop, for `edge-agent adapt`
    from edge_agent.adapt.registry import AdapterRegistry       # `edge-agent adapter list|activate|rollback|export`

Modules: reward (task distribution, judge in both orderings), pairs (split by window, store), dpo (config,
loss, training, evaluation), hf (frozen Qwen3-VL in transformers, layer-L cache), gate, registry, loop.
"""
