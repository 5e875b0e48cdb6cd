-- Healthy while every wanted replica serves the current spec; Progressing while replicas start, load
-- their model or roll out, or a model reference is awaited; Degraded when a rollout passed its progress
-- deadline or the service is stuck (Stalled); Suspended while spec.suspend holds it at no replicas.
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = said(cond.Stalled)
elseif st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: scaled to no replicas"
elseif holds("Reconciling") then
  hs.message = said(cond.Reconciling)
elseif holds("Ready") then
  hs.status = "Healthy"
  hs.message = said(cond.Ready)
elseif cond.Ready ~= nil then
  hs.message = said(cond.Ready)
end
return hs
