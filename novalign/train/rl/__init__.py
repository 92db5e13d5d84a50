"""What GRPO and PPO share: the maths (:mod:`.algorithms`), the reward layer (:mod:`.rewards`), rollouts
(:mod:`.rollout`), the inputs of a run (:mod:`.inputs`), the iteration loop (:mod:`.loop`) and its logs
(:mod:`.logs`). The two trainers themselves are :mod:`novalign.train.grpo` and :mod:`novalign.train.ppo`."""
