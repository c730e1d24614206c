import os, time, torch, logging
logging.disable(logging.WARNING)
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology, ParameterConstraints
from torchrec.distributed.types import ShardingType
from fbgemm_gpu.split_embedding_configs import EmbOptimType
import torch.distributed.checkpoint as dcp
from torch import nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.item = EmbeddingBagCollection(device=torch.device("meta"), tables=[
            EmbeddingBagConfig(name="t_item_id", embedding_dim=64, num_embeddings=4_000_000, feature_names=["item_id"], pooling=PoolingType.MEAN),
            EmbeddingBagConfig(name="t_genre", embedding_dim=64, num_embeddings=30, feature_names=["genre"], pooling=PoolingType.MEAN)])
gloo_ok = [ShardingType.DATA_PARALLEL.value, ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value, ShardingType.TABLE_COLUMN_WISE.value]
for opt in (EmbOptimType.EXACT_ROWWISE_ADAGRAD, EmbOptimType.EXACT_ADAGRAD):
    sharders = [EmbeddingBagCollectionSharder(fused_params={"optimizer": opt, "learning_rate": 0.01})]
    for cap_gb in (4.0, 0.9, 0.6, 0.3):
        t0 = time.time()
        topo = Topology(world_size=2, compute_device="cpu", ddr_cap=int(cap_gb * 2**30), local_world_size=2)
        cons = {t: ParameterConstraints(sharding_types=gloo_ok, min_partition=32) for t in ("t_item_id", "t_genre")}
        try:
            plan = EmbeddingShardingPlanner(topology=topo, constraints=cons).plan(M(), sharders)
            ps = plan.plan["item"]["t_item_id"]
            print(opt.name, cap_gb, "GB ->", ps.sharding_type, ps.ranks, [tuple(s.shard_sizes) for s in ps.sharding_spec.shards], "| genre:", plan.plan["item"]["t_genre"].sharding_type, f"{time.time()-t0:.1f}s")
        except Exception as e:
            print(opt.name, cap_gb, "GB ->", type(e).__module__, type(e).__name__, str(e).replace("\n", " ")[:300])
md = dcp.FileSystemReader("/tmp/h19/out2/ckpt_w2").read_metadata()
print("metadata files:", sorted({v.relative_path for v in md.storage_data.values()}))
print("metadata keys sample:", list(md.state_dict_metadata)[:4])
