-- Healthy while a version is published and nothing is being prepared; Progressing while a preparation
-- Job runs or a reference is awaited; Degraded when the preparation failed or the Dataset is stuck
-- (Stalled); Suspended while spec.suspend holds it.
local version = ""
if st.version ~= nil then
  version = " (version " .. st.version .. " published)"
end
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = said(cond.Stalled) .. version
elseif st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: no preparation runs" .. version
elseif holds("Reconciling") then
  hs.message = said(cond.Reconciling) .. version
elseif holds("Ready") then
  hs.status = "Healthy"
  hs.message = said(cond.Ready)
elseif cond.Ready ~= nil then
  hs.message = said(cond.Ready)
end
return hs
