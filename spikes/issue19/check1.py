import os, sys, time, datetime, copy
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch, torch.distributed as dist
import torch.nn.functional as F
from torch import nn
import torch.multiprocessing as mp
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel, DefaultDataParallelWrapper
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology, ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.distributed.embedding_types import EmbeddingComputeKernel

DIM, NI, NU, B = 8, 50, 20, 8

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_item", embedding_dim=DIM, num_embeddings=NI, feature_names=["item"], pooling=PoolingType.MEAN),
            EmbeddingBagConfig(name="t_user", embedding_dim=DIM, num_embeddings=NU, feature_names=["user"], pooling=PoolingType.MEAN)])
        self.item_mlp = nn.Linear(DIM, DIM)
        self.user_mlp = nn.Linear(DIM, DIM)

def kjt(name, ids):
    return KeyedJaggedTensor.from_lengths_sync(keys=[name], values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))

class Task(nn.Module):
    """forward(users_local, cands_global, pos_local) -> loss; item vectors of the global candidates computed on every rank"""
    def __init__(self, model):
        super().__init__(); self.model = model
    def forward(self, users, cands, pos):
        m = self.model
        u = F.normalize(m.user_mlp(m.ebc(kjt("user", users))["user"]), dim=-1)
        v = F.normalize(m.item_mlp(m.ebc(kjt("item", cands))["item"]), dim=-1)
        return F.cross_entropy(u @ v.T / 0.1, pos)

def batches(steps):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        users = torch.randint(0, NU, (B,), generator=g)
        targets = torch.randint(0, NI, (B,), generator=g)
        cands, where = torch.unique(targets, return_inverse=True)
        out.append((users, cands, where))
    return out

def reference(steps):
    torch.manual_seed(0)
    task = Task(Model())
    opt = torch.optim.AdamW(task.parameters(), lr=0.05)
    losses = []
    for users, cands, pos in batches(steps):
        loss = task(users, cands, pos); loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in task.state_dict().items()}

def worker(rank, world, port, steps, ckpt):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    task = Task(Model())
    full = {k: v.detach().clone() for k, v in task.state_dict().items()}
    dense = EmbeddingComputeKernel.DENSE.value
    constraints = {"t_item": ParameterConstraints(sharding_types=[ShardingType.COLUMN_WISE.value], compute_kernels=[dense], min_partition=DIM // 2),
                   "t_user": ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value], compute_kernels=[dense])}
    topo = Topology(world_size=world, compute_device="cpu", ddr_cap=1 << 30, local_world_size=world)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = EmbeddingShardingPlanner(topology=topo, constraints=constraints).collective_plan(task, sharders, dist.GroupMember.WORLD)
    if rank == 0: print("PLAN", plan, flush=True)
    dmp = DistributedModelParallel(task, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=torch.device("cpu"),
                                   plan=plan, sharders=sharders,
                                   data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=False))
    if rank == 0:
        print("TYPE", type(dmp._dmp_wrapped_module).__name__)
        for k, v in dmp.state_dict().items(): print("SD", k, type(v).__name__, tuple(v.shape))
        for k, p in dmp.named_parameters(): print("NP", k, type(p).__name__, tuple(p.shape))
        print("FUSED OPT params", list(dmp.fused_optimizer.params.keys()))
    # is the sharded init equal to the unsharded one? compare local shards
    sd = dmp.state_dict()
    def local_equal():
        ok = True
        for k, v in dmp.state_dict().items():
            if hasattr(v, "local_shards"):
                for s in v.local_shards():
                    o = s.metadata.shard_offsets; z = s.metadata.shard_sizes
                    ok &= torch.equal(s.tensor, full[k][o[0]:o[0]+z[0], o[1]:o[1]+z[1]])
        return ok
    print(f"rank{rank} sharded init equals unsharded init: {local_equal()}", flush=True)
    # copy the unsharded init into the local shards
    with torch.no_grad():
        for k, v in dmp.state_dict().items():
            if hasattr(v, "local_shards"):
                for s in v.local_shards():
                    o = s.metadata.shard_offsets; z = s.metadata.shard_sizes
                    s.tensor.copy_(full[k][o[0]:o[0]+z[0], o[1]:o[1]+z[1]])
    print(f"rank{rank} after copy equal: {local_equal()}", flush=True)
    opt = torch.optim.AdamW(dmp.parameters(), lr=0.05)
    losses = []
    half = B // world
    for users, cands, pos in batches(steps):
        sl = slice(rank * half, (rank + 1) * half)
        loss = dmp(users[sl], cands, pos[sl])
        loss.backward(); opt.step(); opt.zero_grad()
        l = loss.detach().clone(); dist.all_reduce(l); losses.append((l / world).item())
    # gather full state to rank 0 for comparison
    got = {}
    for k, v in dmp.state_dict().items():
        if hasattr(v, "gather"):
            out = torch.empty(v.size()) if rank == 0 else None
            v.gather(dst=0, out=out); got[k] = out
        else:
            got[k] = v
    if rank == 0:
        ref_losses, ref_sd = reference(steps)
        print("losses 2proc", [round(x, 6) for x in losses])
        print("losses 1proc", [round(x, 6) for x in ref_losses])
        for k in ref_sd:
            kk = k
            print("MAXDIFF", k, (got[kk] - ref_sd[k]).abs().max().item())
    # DCP save
    import torch.distributed.checkpoint as dcp
    t0 = time.time()
    dcp.save({"model": dmp.state_dict()}, checkpoint_id=ckpt)
    if rank == 0: print("dcp.save ok", round(time.time() - t0, 2), os.listdir(ckpt), flush=True)
    torch.save(got if rank == 0 else None, ckpt + f"/../ref_{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    steps = 5; ckpt = "/tmp/h19/ckpt1"
    import shutil; shutil.rmtree(ckpt, ignore_errors=True)
    t0 = time.time()
    mp.spawn(worker, args=(2, 29517, steps, ckpt), nprocs=2, join=True)
    print("spawn done", round(time.time() - t0, 1))
