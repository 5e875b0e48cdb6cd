-- Like a Job's: Progressing while it waits, starts or trains; Healthy once it Succeeded (its model is
-- written); Degraded when it Failed or is stuck (Stalled); Suspended while spec.suspend holds it.
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = said(cond.Stalled)
elseif holds("Succeeded") then
  hs.status = "Healthy"
  hs.message = said(cond.Ready or cond.Succeeded)
elseif st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: pods deleted, checkpoints kept"
elseif cond.Ready ~= nil then
  hs.message = said(cond.Ready)
  if st.progress ~= nil and st.progress.step ~= nil and st.progress.totalSteps ~= nil then
    hs.message = hs.message .. "; step " .. st.progress.step .. " of " .. st.progress.totalSteps
  end
end
return hs
